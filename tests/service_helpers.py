"""Helpers for service-level tests: NUAA clips, enrollment, replay through the real Service,
and a separate MQTT subscriber that records what Home Assistant would see."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import cv2
import paho.mqtt.client as paho
import pytest
from mqtt_client import FakeRelay
from paho.mqtt.enums import CallbackAPIVersion

from facelock_mqtt.cli import recognizer
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.service import Service, replay_camera
from facelock_mqtt.settings import Settings, load_settings


class Watcher:
    """A separate MQTT client recording every message on FaceLock's topics."""

    def __init__(self, host: str, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe([("facelock/#", 1), ("homeassistant/#", 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, topic: str, payload: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if payload in self.payloads(topic):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def nuaa_frames(shared_data: Path, identity: str, session: str) -> list[Path]:
    folder = shared_data / "nuaa" / "live" / identity
    files = [p for p in folder.glob("*.jpg") if p.stem.split("_")[3] == session]
    return sorted(files, key=lambda p: int(p.stem.split("_")[-1]))


def write_clip(frames: list[Path], target: Path, fps: float = 10.0, repeat: int = 1) -> Path:
    images = [read_image(p) for p in frames]
    height, width = images[0].shape[:2]
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for _ in range(repeat):
        for image in images:
            writer.write(image)
    writer.release()
    return target


def service_settings(tmp_path: Path, mosquitto) -> Settings:
    """Settings for a service under test: its own data dir and broker, fast relock, no liveness."""
    return load_settings(
        data_dir=tmp_path / "data",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_e2e"},
        lock={"relock_s": 1.0, "unlocking_s": 0.1},
        liveness={"models": tmp_path / "no-liveness", "required": False},
    )


def enroll(settings, shared_data: Path, identity: str, session: str) -> None:
    rec = recognizer(settings)  # as `facelock enroll` does: the change is vouched for in the audit trail
    images = [(str(p), read_image(p)) for p in nuaa_frames(shared_data, identity, session)[:3]]
    assert rec.enroll(identity, images) == 3
    rec.close()


def replay(settings, clip: Path, relay: dict[str, FakeRelay]) -> list[dict]:
    events: list[dict] = []

    def relay_factory(door: str) -> FakeRelay:
        relay[door] = FakeRelay()
        return relay[door]

    service = Service(
        settings, cameras=[replay_camera(str(clip), "front", 10.0)], realtime=False,
        on_event=events.append, relay_factory=relay_factory,
    )  # fmt: skip
    service.bridge.start()  # the broker first, as `facelock replay` does: a decision without it is denied
    assert service.bridge.mqtt.connected.wait(10)
    service.start_cameras()
    assert service.wait(timeout=120), "replay did not finish"
    time.sleep(1.5)  # let the relock timer run
    service.stop()
    return events


def need_torch():
    """Import the training network (needs torch): fail in CI, skip elsewhere without it."""
    try:
        from training import minifasnet
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"torch is required in CI: {exc}")
        pytest.skip(f"torch not installed: {exc}")
    return minifasnet
