"""`facelock bench --smoke`: every figure is produced, from real NUAA frames, the real models and a
real broker, and the speed rewrites keep what the models compute.

No timing assertions: the smoke run prints its figures (see the captured output) and the tests
check what must hold whatever the machine's speed: every figure is there, the door-day visits
and the latency trial end as they should, both verifiers answer every pair.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from facelock_mqtt.cli import main
from facelock_mqtt.models.default_bundle import default_bundle, fp32_view
from facelock_mqtt.pipeline.embed import Embedder, rewrite_prelu
from facelock_mqtt.pipeline.gate import STILL_S, MotionGate
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import GateSettings
from facelock_mqtt.tools.bench_clips import Scene, background, person_patches, session_frames, visit_frames
from facelock_mqtt.tools.bench_report import headline


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir per module, so the default bundle is built once."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def smoke(home: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    # Every section but doors, which tests/tools/test_bench_doors.py runs at the same smoke sizes.
    sections = "gate,energy,latency,stages,peer"
    args = ["--data-dir", str(home), "--log-level", "warning", "bench", "--smoke", "--sections", sections]
    args += ["--data", str(shared_data)]
    assert main([*args, "--json", str(out / "bench.json"), "--markdown", str(out / "bench.md")]) == 0
    text = (out / "bench.md").read_text()
    print(text)  # the figures of this run, in the test log
    return json.loads((out / "bench.json").read_text()), text


def test_every_headline_figure_is_measured_and_printed(smoke):
    report, text = smoke
    rows = headline(report)
    assert len(rows) >= 15  # 2 gate sizes, 5 energy, 3 latency, embedder (2), 2 idle, peer (2)
    missing = [label for label, value, _, _ in rows if value is None]
    assert not missing, missing
    for label, *_ in rows:
        assert label in text
    for name in ("gate", "energy", "latency", "stages", "peer"):
        assert f"### {name}" in text
        assert report["sections"][name]["load_1min"]["before"] >= 0


def test_door_day_visits_and_latency_trials_end_as_they_should(smoke):
    report, _ = smoke
    energy = report["sections"]["energy"]
    for mode in ("gate", "gate_substream", "every_frame"):
        outcomes = energy[mode]["outcomes"]
        assert outcomes and all(o["as_expected"] for o in outcomes), outcomes
    assert energy["visits_missed_by_gate"] == 0
    # gate_url: the sub-stream saw every frame, the main stream was decoded only around the visit
    sub = energy["gate_substream"]
    assert sub["sub_frames_decoded"] == energy["frames"] > sub["frames_decoded"]
    assert all(late <= 1 for late in sub["wake_lateness_frames"]) and sub["wake_lateness_frames"]
    assert energy["gate"]["frames_analysed"] <= energy["every_frame"]["frames_analysed"]
    runs = report["sections"]["latency"]["runs"]
    assert {run["liveness"] for run in runs} == {"off", "on"}  # the default (liveness required) is measured too
    for run in runs:
        assert run["unlocked"] == run["trials"] and run["failed"] == 0
        assert run["unlock_ms"]["p50"] > 0


def test_service_children_and_peer_report_real_work(smoke):
    report, _ = smoke
    children = report["sections"]["stages"]["service"]
    assert [(c["cameras"], c["gate_url"]) for c in children] == [(1, False), (4, False), (1, True)]
    assert all(c["peak_rss_mb"] > 50 and c["frames"] > 0 for c in children)
    peer = report["sections"]["peer"]
    for name in ("ours", "peer"):
        assert peer[name]["errors"] == 0
        assert peer[name]["genuine_accepted"] + peer[name]["impostor_rejected"] == peer["pairs"]


def test_prelu_rewrite_keeps_the_sface_embeddings(home: Path, shared_data: Path):
    bundle = fp32_view(default_bundle(home))  # the rewrite is what fp32 serving runs
    assert rewrite_prelu(onnx.load(str(bundle.file(bundle.manifest.embedder.file)))) > 0
    served = Embedder(bundle, threads=1)
    plain = bundle.session(bundle.manifest.embedder.file, 1)
    crops = [read_image(p) for p in sorted((shared_data / "lfw_aligned_112").glob("*/*.jpg"))[:8]]
    reference = plain.run(None, {plain.get_inputs()[0].name: served._tensor(crops)})[0]
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    embeddings = served.embed(crops)
    assert np.abs(embeddings - reference).max() < 1e-5
    assert np.abs(embeddings @ embeddings.T - reference @ reference.T).max() < 1e-5  # every score kept


def test_gate_forgets_the_ghost_of_a_visitor_who_left(shared_data: Path):
    """The energy figure rests on the gate closing soon after a visit, not when the running
    average has slowly unlearnt the visitor."""
    fps, hold = 5.0, GateSettings().hold_s
    paths = session_frames(shared_data, "s0001", "02")
    box = np.array([270, 130, 145, 200], np.float32)  # the face in s0001's session-02 frames
    visit = visit_frames(person_patches(paths, box), fps)
    scene, gate = Scene(background()), MotionGate(GateSettings())
    results = [gate.update(scene.render(1.0), i / fps) for i in range(10)]
    results += [gate.update(scene.render(1.0, p), (10 + i) / fps) for i, p in enumerate(visit)]
    assert not any(r.passed for r in results[:10])
    assert all(r.passed for r in results[11:])  # moving in (the first frame shows nobody), standing, leaving
    left = 10 + len(visit)
    after = [gate.update(scene.render(1.0), (left + i) / fps) for i in range(60)]
    open_s = sum(r.passed for r in after) / fps
    print(f"gate open {open_s:.1f} s after the visitor left")
    assert open_s <= STILL_S + hold + 2 / fps < 5.0  # the unlearnt ghost kept it open ~8 s
    assert not any(r.passed for r in after[-20:])
