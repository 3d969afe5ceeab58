"""Fail secure on the decision path: a fault anywhere between the frame and the relay keeps the
door locked (real models, real gallery, real audit trail, real broker; only the relay is fake)."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from mqtt_client import FakeRelay
from service_helpers import nuaa_frames

from facelock_mqtt.cli import recognizer
from facelock_mqtt.door import Door, Guards
from facelock_mqtt.guards.audit import AUDIT_FILE
from facelock_mqtt.guards.liveness import LivenessModel
from facelock_mqtt.guards.lockout import Lockout
from facelock_mqtt.homeassistant.bridge import HomeAssistantBridge
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.source import Frame
from facelock_mqtt.settings import CameraSettings, load_settings


@pytest.fixture
def build(tmp_path, mosquitto, shared_data):
    """A door factory over one real recognizer (s0001 enrolled), bridge and lockout; each door
    reports its events into `door.events`."""
    settings = load_settings(
        data_dir=tmp_path / "data", mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "door_test"}
    )
    rec = recognizer(settings)
    rec.enroll("s0001", [(str(p), read_image(p)) for p in nuaa_frames(shared_data, "s0001", "01")[:3]])
    relay = FakeRelay()
    bridge = HomeAssistantBridge(settings.mqtt, ["front"], settings.lock, lambda door: relay)
    bridge.start()
    assert bridge.mqtt.connected.wait(10)
    lockout = Lockout(settings.lockout, tmp_path / "lockout.json")

    def make(camera: CameraSettings | None = None, liveness_required: bool = False, liveness=None) -> Door:
        # No liveness models unless given: these doors then run with liveness explicitly not required.
        guards = Guards(lockout, rec.audit, liveness, liveness_required=liveness_required)
        camera = camera or CameraSettings(name="front", url="unused.avi", fps=10.0)
        events: list[dict] = []
        door = Door(camera, settings.gate, settings.decision, rec, bridge.locks["front"], guards, bridge, events.append)
        door.events = events
        return door

    frames = [read_image(p) for p in nuaa_frames(shared_data, "s0001", "02")]
    yield make, relay, frames, settings
    bridge.stop()
    rec.close()


@pytest.fixture
def parts(build):
    make, relay, frames, settings = build
    return make(), relay, frames, settings


def play(door: Door, frames) -> None:
    for i, image in enumerate(frames):
        door.process(Frame(image, ts=0.0, seq=i + 1, pts=i / 10.0))


def test_the_enrolled_person_unlocks(parts):
    door, relay, frames, _ = parts
    play(door, frames)
    assert "unlock" in relay.calls and door.stats.errors == 0


class ThreadRecordingSession:
    """A real onnxruntime session that records which thread ran it."""

    def __init__(self, session) -> None:
        self.session, self.threads = session, []

    def run(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        return self.session.run(*args, **kwargs)


def test_the_liveness_evidence_is_taken_beside_the_embedding_never_on_the_decision(build, liveness_models):
    make, relay, frames, _ = build
    model = LivenessModel.from_dir(liveness_models)
    recording = [(spec, ThreadRecordingSession(session)) for spec, session in model.sessions]
    model.sessions = recording
    door = make(liveness=model)
    try:
        play(door, frames)
    finally:
        model.close()
    recognized = [e for e in door.events if e["event_type"] == "recognized"]
    assert "unlock" in relay.calls and recognized and door.stats.errors == 0
    runs = [name for _, session in recording for name in session.threads]
    # Every CNN run was a worker's, while the door thread embedded: none came after the match.
    assert runs and all(name.startswith("liveness") for name in runs), set(runs)
    # Each frame once per model: the decision found its evidence taken and ran nothing again.
    assert len(recording[0][1].threads) == len(recording[1][1].threads) <= door.stats.analysed


def test_audit_failure_keeps_the_door_locked(parts):
    door, relay, frames, _ = parts
    door.guards.audit.close()  # the trail cannot be written: no unlock may go unrecorded
    play(door, frames)
    assert door.stats.errors >= 1
    assert "unlock" not in relay.calls and door.lock.state == "LOCKED"


def test_gallery_tampered_mid_run_keeps_the_door_locked(parts):
    door, relay, frames, settings = parts
    with sqlite3.connect(settings.data_dir / "gallery.db") as db:
        db.execute("INSERT INTO people (name, created) VALUES ('mallory', 0)")
    play(door, frames)
    assert door.stats.errors >= 1
    assert "unlock" not in relay.calls and door.lock.state == "LOCKED"


def test_lockout_refuses_even_the_enrolled_person(parts):
    door, relay, frames, settings = parts
    for _ in range(settings.lockout.max_failures):
        door.guards.lockout.record_failure("front")
    play(door, frames)
    assert door.stats.refused_lockout > 0
    assert "unlock" not in relay.calls
    assert (settings.data_dir / AUDIT_FILE).exists()


def test_without_liveness_models_a_recognised_face_is_denied_by_default(build):
    make, relay, frames, _ = build
    door = make(liveness_required=True)
    play(door, frames)
    decisions = [e for e in door.events if e["event_type"] != "lockout"]
    assert decisions and all(e["event_type"] == "denied" for e in decisions), decisions
    assert decisions[0]["reason"].startswith("liveness unavailable") and decisions[0]["candidate"] == "s0001"
    assert decisions[0]["person"] is None and "unlock" not in relay.calls


def test_an_untrusted_mqtt_camera_reports_but_never_unlocks(build):
    make, relay, frames, _ = build
    door = make(CameraSettings(name="front", mqtt_topic="frigate/front/snapshot", fps=10.0))
    play(door, frames)
    assert door.events and door.events[0]["event_type"] == "denied", door.events
    assert "untrusted source" in door.events[0]["reason"] and "frigate/front/snapshot" in door.events[0]["reason"]
    assert "unlock" not in relay.calls
    trusted = make(CameraSettings(name="front", mqtt_topic="frigate/front/snapshot", fps=10.0, trusted=True))
    play(trusted, frames)
    assert trusted.events[0]["event_type"] == "recognized" and "unlock" in relay.calls


def test_a_gate_only_frame_wakes_the_door_but_never_reaches_a_decision(parts):
    """gate_url sub-stream frames (pipeline/gate_stream.py) only feed the motion gate."""
    door, relay, frames, _ = parts
    empty = frames[0] // 4  # a dark, still scene first, so the enrolled face is motion
    for i in range(10):
        door.process(Frame(empty, ts=0.0, seq=i + 1, pts=i / 10.0, gate_only=True))
    for i, image in enumerate(frames, start=10):
        door.process(Frame(image, ts=0.0, seq=i + 1, pts=i / 10.0, gate_only=True))
    assert door.gate_passed and not door.idle  # the source is told to wake up
    assert door.stats.analysed == 0 and door.attempt is None and not door.events and "unlock" not in relay.calls
    play(door, frames)  # the same frames from the main stream decide
    assert "unlock" in relay.calls
