"""The served activity gate (pipeline/ml_gate.py): a TinyGate trained here on door clips with real
NUAA people (labels from the clip plan), exported through the training chain's exporter, then
served by onnxruntime as `gate.kind` ml and both, alone and inside a real Door."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from service_helpers import need_torch

from facelock_mqtt.errors import BundleError
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.gate import MotionGate
from facelock_mqtt.pipeline.ml_gate import ActivityModel, BothGates, MlGate, build_gate, preprocess
from facelock_mqtt.settings import GateSettings, ModelSettings, QualitySettings
from facelock_mqtt.tools.bench_gates import FPS, TRAIN_PEOPLE, BENCH_PEOPLE, GateClip, shadows, visitors
from facelock_mqtt.tools.bench_clips import background, plan_door_day


def labelled(clip: GateClip) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """64x64 frames, 1 where a whole person is in view (the clip plan's truth), and the frames."""
    frames = list(clip.frames())
    truth = np.asarray([i in clip.day.shown and clip.day.shown[i].whole for i in range(len(frames))], np.float32)
    small = np.stack([np.round(preprocess(f, 64)[0, 0] * 255).astype(np.uint8) for f in frames])
    return small, truth, frames


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> FaceEngine:
    return FaceEngine(default_bundle(tmp_path_factory.mktemp("models")), ModelSettings(), QualitySettings())


@pytest.fixture(scope="module")
def held_out(engine, shared_data) -> GateClip:
    who = visitors(engine, shared_data, BENCH_PEOPLE, 2)
    return GateClip("held out", plan_door_day(60.0, FPS, who, seed=5), background(seed=55), shadows(12.0), 56)


@pytest.fixture(scope="module")
def bundle(engine, shared_data, tmp_path_factory) -> Path:
    need_torch()
    from training.activity_gate import ActivityConfig, export_bundle, train

    who = visitors(engine, shared_data, TRAIN_PEOPLE, 3)
    clips = [GateClip(f"t{n}", plan_door_day(60.0, FPS, who, seed=60 + n), background(seed=70 + n), effect, 80 + n)
             for n, effect in enumerate([None, shadows(9.0)])]  # fmt: skip
    parts = [labelled(c)[:2] for c in clips]
    images, person = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    cfg = ActivityConfig(epochs=6)
    net = train(images, person, cfg)
    report = {"params": sum(t.numel() for t in net.parameters())}
    return export_bundle(net, tmp_path_factory.mktemp("gate"), 0.5, {**_card(report), "refused": []}, cfg)


def _card(report: dict) -> dict:
    empty = {"frames": 0, "recall": 0.0, "fpr": 0.0, "passed_share_by_label": {}}
    return {**report, "train_s": 0.0, "ms_per_frame": 0.0, "data": "test", "sessions": {}, "labels": {},
            "overfit_loss": 0.0, "threshold": 0.5, "config": {"val_recall": 0.99}, "metrics": {"test": empty}}  # fmt: skip


def settings(kind: str, bundle: Path | None) -> GateSettings:
    return GateSettings(kind=kind, ml_model=bundle)


def test_kind_ml_or_both_needs_a_model():
    with pytest.raises(ValidationError, match="ml_model"):
        GateSettings(kind="ml")
    assert isinstance(build_gate(GateSettings()), MotionGate)


def test_the_ml_gate_passes_people_and_not_a_sweeping_shadow(bundle, held_out):
    _, truth, frames = labelled(held_out)
    gate = MlGate(settings("ml", bundle), ActivityModel(bundle))
    probabilities = []
    for index, frame in enumerate(frames):
        gate.update(frame, index / FPS)
        probabilities.append(gate.last_probability)
    p = np.asarray(probabilities)
    assert (p[truth == 1] >= 0.5).mean() >= 0.9, p[truth == 1]
    assert (p[truth == 0] >= 0.5).mean() <= 0.1  # empty scene and the shadow's sweeps alike


def test_both_asks_the_network_only_about_what_motion_passed(bundle, held_out):
    gate = build_gate(settings("both", bundle))
    assert isinstance(gate, BothGates)
    passed = [gate.update(f, i / FPS).passed for i, f in enumerate(held_out.frames())]
    assert 0 < gate.ml.stats.frames_seen < gate.motion.stats.frames_seen
    assert gate.ml.stats.frames_seen == gate.motion.stats.frames_passed
    assert sum(passed) <= gate.motion.stats.frames_passed


def test_a_door_builds_the_gate_its_settings_name(bundle):
    assert isinstance(build_gate(settings("ml", bundle)), MlGate)
    missing = bundle.parent / "nothing-here"
    with pytest.raises(BundleError):
        build_gate(settings("ml", missing))
