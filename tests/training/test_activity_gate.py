"""The activity-gate chain on real data: synthetic door clips with real NUAA people, auto-labelled
by `facelock collect` (face detector + motion gate), then split by session, overfit check,
training, evaluation, acceptance gate and export to a bundle the service loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from service_helpers import need_torch

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.ml_gate import ActivityModel
from facelock_mqtt.settings import GateSettings, ModelSettings, QualitySettings
from facelock_mqtt.tools.collect import LABELS, collect_videos


@pytest.fixture(scope="module")
def chain(tmp_path_factory, shared_data: Path) -> tuple[Path, dict, dict]:
    need_torch()
    from training.activity_gate import ActivityConfig, run, write_clips

    root = tmp_path_factory.mktemp("activity")
    clips = write_clips(shared_data, root / "clips", seconds=60.0, visits=3)
    engine = FaceEngine(default_bundle(root / "clips" / "bundle"), ModelSettings(), QualitySettings())
    counts = collect_videos(clips, root / "data", engine, GateSettings(), QualitySettings(), fps=5.0, every=2)
    report = run(root / "data", root / "bundle", ActivityConfig(epochs=6))
    return root, counts, report


def test_collect_labels_every_kept_frame_by_detector_and_gate(chain):
    root, counts, _ = chain
    assert len(counts) == 10 and all(c.get("person", 0) > 0 for c in counts.values()), counts
    assert sum(c.get("motion", 0) for c in counts.values()) > 0  # shadows, headlights, rain: motion, no face
    saved = {label: len(list((root / "data" / label).glob("*.png"))) for label in LABELS}
    assert saved == {label: sum(c.get(label, 0) for c in counts.values()) for label in LABELS}
    assert json.loads((root / "data" / "collect.json").read_text()) == counts


def test_the_split_is_by_session_and_the_checks_ran(chain):
    _, _, report = chain
    sessions = report["sessions"]
    assert set(sessions["train"]).isdisjoint(sessions["val"]) and set(sessions["val"]).isdisjoint(sessions["test"])
    assert set(sessions["train"]).isdisjoint(sessions["test"]) and all(sessions.values())
    assert report["overfit_loss"] < 0.05
    assert report["params"] <= 100_000 and report["ms_per_frame"] <= 0.5


def test_the_trained_gate_finds_people_and_ignores_the_rest_on_held_out_clips(chain):
    _, _, report = chain
    test = report["metrics"]["test"]
    assert test["recall"] >= 0.9 and test["fpr"] <= 0.1, report["metrics"]


def test_the_exported_bundle_serves_the_same_probabilities(chain):
    root, _, report = chain
    if report["refused"]:
        pytest.fail(f"the gate was refused: {report['refused']}")
    model = ActivityModel(root / "bundle")
    assert model.threshold == pytest.approx(report["threshold"])
    frames = sorted((root / "data" / "person").glob("*.png"))[:5] + sorted((root / "data" / "empty").glob("*.png"))[:5]
    import cv2

    probabilities = [model.probability(cv2.imread(str(p))) for p in frames]
    assert np.mean(probabilities[:5]) > np.mean(probabilities[5:])


def test_a_tampered_bundle_is_refused(chain, tmp_path):
    root, _, _ = chain
    copy = tmp_path / "bundle"
    copy.mkdir()
    for path in (root / "bundle").iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    model = copy / "activity_gate.onnx"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    with pytest.raises(BundleError, match="SHA-256"):
        ActivityModel(copy)


def test_a_refused_gate_cannot_be_served(chain, tmp_path):
    from training.activity_gate import ActivityConfig, acceptance

    root, _, report = chain
    strict = ActivityConfig(min_test_recall=1.01)  # no gate can pass this: the refusal path
    assert acceptance(report["metrics"]["test"], report["params"], report["ms_per_frame"], strict)
    copy = tmp_path / "refused"
    copy.mkdir()
    for path in (root / "bundle").iterdir():
        name = "manifest.refused.json" if path.name == "manifest.json" else path.name
        (copy / name).write_bytes(path.read_bytes())
    with pytest.raises(BundleError, match="manifest.json"):
        ActivityModel(copy)
