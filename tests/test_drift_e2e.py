"""Drift end to end: the real service replays a clip of real webcam faces (NUAA) to learn the
camera's reference, then the same clip again (nothing drifts), then darkened and blurred copies:
the door's drift sensor and its `problem` binary sensor, seen by a separate MQTT client, react
only to the changed ones, and `facelock drift --json` says which statistic moved."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mqtt_client import Collector, FakeRelay

import facelock_mqtt.service as service_module
from facelock_mqtt.homeassistant.topics import Topics
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.service import Service, replay_camera
from facelock_mqtt.settings import Settings, load_settings

DOOR = "front"
TOPICS = Topics()
DRIFT = {"reference_samples": 60, "reference_days": 0.0, "window": 40, "min_samples": 20}


@pytest.fixture
def settings(tmp_path: Path, mosquitto) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_drift"},
        liveness={"models": tmp_path / "no-liveness", "required": False},
        gate={"enabled": False},  # every frame is analysed: the clip is a shuffle of people, not one visit
        decision={"cooldown_s": 0.0},
        lockout={"max_failures": 100, "window_s": 1.0},  # nobody is enrolled: every attempt is a denial
        drift=DRIFT,
    )


@pytest.fixture
def frames(shared_data: Path) -> list[np.ndarray]:
    paths = sorted((shared_data / "nuaa" / "live").glob("*/*.jpg"))
    random.Random(7).shuffle(paths)
    return [read_image(p) for p in paths[:80]]


def write(images: list[np.ndarray], target: Path) -> Path:
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    for image in images:
        writer.write(image)
    writer.release()
    return target


def replay(settings: Settings, clip: Path, mosquitto) -> Collector:
    """One run of the service on `clip`; returns what a separate MQTT client saw of the door."""
    watcher = Collector(mosquitto.host, mosquitto.port, [f"{TOPICS.door(DOOR)}/#"])
    service = Service(settings, cameras=[replay_camera(str(clip), DOOR, 10.0)], realtime=False,
                      relay_factory=lambda _: FakeRelay())  # fmt: skip
    service.start()
    try:
        assert service.bridge.mqtt.connected.wait(10)
        assert service.wait(timeout=180), "replay did not finish"
    finally:
        service.stop()
    watcher.close()
    return watcher


def problem_reasons(watcher: Collector) -> list[list[str]]:
    return [json.loads(p)["reasons"] for p in watcher.payloads(TOPICS.problem_attributes(DOOR))]


def drift_scores(watcher: Collector) -> list[float]:
    return [float(p) for p in watcher.payloads(TOPICS.sensor(DOOR, "drift")) if p != b"None"]


def drift_cli(settings: Settings) -> dict:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("facelock")), "drift", "--json"],
        env={**os.environ, "FACELOCK_DATA_DIR": str(settings.data_dir), "FACELOCK_OPTIONS_FILE": "/nonexistent",
             "FACELOCK_DRIFT__MIN_SAMPLES": "20"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_darkened_and_blurred_clips_raise_the_drift_problem_and_a_normal_clip_does_not(
    settings, frames, mosquitto, tmp_path, monkeypatch
):
    monkeypatch.setattr(service_module, "SENSOR_PERIOD_S", 0.2)  # replay runs faster than the 10 s period
    normal = write(frames, tmp_path / "normal.avi")
    learning = replay(settings, normal, mosquitto)  # the camera's first days, compressed
    assert not any(any(r.startswith("drift:") for r in reasons) for reasons in problem_reasons(learning))

    again = replay(settings, normal, mosquitto)
    scores = drift_scores(again)
    assert scores, "the drift sensor was never published with a value"
    assert max(scores) < settings.drift.psi_act, scores
    assert not any(any(r.startswith("drift:") for r in reasons) for reasons in problem_reasons(again))
    assert b"ON" not in again.payloads(TOPICS.problem(DOOR))
    assert not any(s["drifted"] for s in drift_cli(settings)[DOOR].values())

    dark = replay(settings, write([(f * 0.35).astype(np.uint8) for f in frames], tmp_path / "dark.avi"), mosquitto)
    assert b"ON" in dark.payloads(TOPICS.problem(DOOR))
    assert any(any(r.startswith("drift: face brightness") for r in reasons) for reasons in problem_reasons(dark))
    assert max(drift_scores(dark)) > settings.drift.psi_act
    report = drift_cli(settings)[DOOR]
    assert report["brightness"]["drifted"] and not report["face_size"]["drifted"], report
    assert report["brightness"]["recent_mean"] < report["brightness"]["reference_mean"]

    blurred = replay(settings, write([cv2.GaussianBlur(f, (0, 0), 3.0) for f in frames], tmp_path / "blur.avi"), mosquitto)
    assert any(any(r.startswith("drift: face sharpness") for r in reasons) for reasons in problem_reasons(blurred))
    assert drift_cli(settings)[DOOR]["blur"]["drifted"]
