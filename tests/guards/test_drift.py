"""The drift monitor on real faces: NUAA webcam frames through the real detector and quality
stage, then the same frames darkened or blurred as an ageing sensor or a dirty lens would."""

from __future__ import annotations

import json
import random
import stat

import cv2
import numpy as np
import pytest

from facelock_mqtt.guards.drift import DriftMonitor, error_analysis, psi, saved_monitors
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import DriftSettings, ModelSettings, QualitySettings

SETTINGS = DriftSettings(reference_samples=80, reference_days=0.0, window=60, min_samples=30)


@pytest.fixture(scope="module")
def frames(shared_data) -> list[np.ndarray]:
    paths = sorted((shared_data / "nuaa" / "live").glob("*/*.jpg"))
    random.Random(13).shuffle(paths)  # both halves then hold every person, session and light
    return [read_image(p) for p in paths[:160]]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> FaceEngine:
    return FaceEngine(default_bundle(tmp_path_factory.mktemp("bundle")), ModelSettings(), QualitySettings())


def faces(engine: FaceEngine, images: list[np.ndarray]) -> list:
    results = [engine.analyze(image) for image in images]
    return [r for r in results if r is not None]


def darken(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) * 0.35).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 3.0)


def learned(engine: FaceEngine, reference: list[np.ndarray], path=None, shipped: bool = True) -> DriftMonitor:
    monitor = DriftMonitor("front", SETTINGS, path, shipped)
    for result in faces(engine, reference):
        monitor.observe_face(result)
    return monitor


def drifted(monitor: DriftMonitor) -> set[str]:
    return {key for key, v in monitor.report().items() if v["drifted"]}


def test_psi_is_zero_for_one_distribution_and_large_for_a_shift():
    same = np.array([10.0, 20, 30, 40])
    assert psi(same, 3 * same) == pytest.approx(0.0, abs=1e-12)
    assert psi(same, same[::-1]) > 0.5


def test_nothing_is_judged_before_the_reference_is_complete_without_a_model_card(engine, frames):
    monitor = learned(engine, frames[:40], shipped=False)
    report = monitor.report()
    assert report["brightness"]["psi"] is None and report["brightness"]["level"] == "learning"
    assert monitor.score() is None and monitor.problems() == []


def test_until_then_the_model_cards_data_is_the_reference_and_raises_no_problem(engine, frames):
    monitor = learned(engine, [darken(f) for f in frames[:40]])  # a dark camera from the first day
    report = monitor.report()
    assert report["brightness"]["reference"] == "model card" and report["brightness"]["drifted"], report
    assert report["face_size"]["reference"] == "model card" and not report["face_size"]["drifted"]
    assert monitor.score() > SETTINGS.psi_act
    assert monitor.problems() == []  # most cameras differ from it: `facelock drift` says so, the sensor does not
    assert "unlock_score" not in monitor.shipped and report["unlock_score"]["level"] == "learning"


def test_more_frames_of_the_same_camera_do_not_drift(engine, frames):
    monitor = learned(engine, frames[:80])
    for result in faces(engine, frames[80:]):
        monitor.observe_face(result)
    report = monitor.report()
    assert report["brightness"]["reference"] == "camera", report  # judged against the camera's own first faces
    assert drifted(monitor) == set(), report
    assert monitor.problems() == []


def test_a_darkened_camera_drifts_in_brightness_and_the_problem_says_so(engine, frames):
    monitor = learned(engine, frames[:80])
    for result in faces(engine, [darken(f) for f in frames[80:]]):
        monitor.observe_face(result)
    report = monitor.report()
    assert "brightness" in drifted(monitor), report
    assert "face_size" not in drifted(monitor), report  # the faces did not move
    assert report["brightness"]["recent_mean"] < 0.6 * report["brightness"]["reference_mean"]
    assert any(p.startswith("drift: face brightness") for p in monitor.problems())
    assert monitor.score() > SETTINGS.psi_act


def test_a_blurred_lens_drifts_in_sharpness(engine, frames):
    monitor = learned(engine, frames[:80])
    for result in faces(engine, [blur(f) for f in frames[80:]]):
        monitor.observe_face(result)
    assert "blur" in drifted(monitor), monitor.report()
    assert "brightness" not in drifted(monitor)


def test_the_state_survives_a_restart_owner_only(engine, frames, tmp_path):
    path = tmp_path / "drift-front.json"
    monitor = learned(engine, frames[:80], path)
    for result in faces(engine, [darken(f) for f in frames[80:120]]):
        monitor.observe_face(result)
    monitor.observe_decision({"event_type": "denied", "score": 0.21, "liveness": None})
    monitor.save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = saved_monitors(tmp_path, SETTINGS)["front"]
    assert again.report() == monitor.report()
    assert again.conditions == monitor.conditions


def test_a_damaged_state_file_starts_a_new_reference(tmp_path):
    path = tmp_path / "drift-front.json"
    path.write_text(json.dumps({"format_version": 1, "statistics": {"brightness": {"reference": [1, 2]}}}))
    monitor = DriftMonitor("front", SETTINGS, path)
    assert all(not t.reference.any() and not t.frozen for t in monitor.trackers.values())
    assert {v["reference"] for v in monitor.report().values()} <= {"model card", None}


def test_decisions_feed_scores_and_the_error_analysis_by_condition(engine, frames):
    monitor = DriftMonitor("front", SETTINGS)
    bright, dark = faces(engine, frames[:3]), faces(engine, [darken(f) for f in frames[3:6]])
    for result in bright:
        monitor.observe_face(result)
    monitor.observe_decision({"event_type": "recognized", "score": 0.71, "liveness": 0.93})
    for result in dark:
        monitor.observe_face(result)
    monitor.observe_decision({"event_type": "denied", "score": 0.32, "liveness": None})
    report = monitor.report()
    assert report["unlock_score"]["reference_samples"] == 1 and report["denial_score"]["reference_samples"] == 1
    assert report["liveness"]["reference_samples"] == 1
    bands = error_analysis(monitor.conditions)["brightness"]
    outcomes = {band: {k for k in row if k in ("recognized", "denied")} for band, row in bands.items()}
    assert {"recognized"} in outcomes.values() and {"denied"} in outcomes.values(), bands
    assert sum(row["total"] for row in bands.values()) == 2
