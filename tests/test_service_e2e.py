"""End to end: a clip of real NUAA frames replayed through the live pipeline, a real Mosquitto,
the real models, and a subscriber that watches what Home Assistant would see."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from mqtt_client import FakeRelay
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import (
    Watcher,
    enroll,
    nuaa_frames,
    replay,
    service_settings,
    write_clip,
)

from facelock_mqtt.pipeline.imageio import encode_jpeg, read_image
from facelock_mqtt.service import Service
from facelock_mqtt.settings import CameraSettings


@pytest.fixture
def settings(tmp_path: Path, mosquitto):
    return service_settings(tmp_path, mosquitto)


def test_enrolled_person_unlocks_then_relocks(settings, shared_data, mosquitto, tmp_path):
    enroll(settings, shared_data, "s0001", "01")
    clip = write_clip(nuaa_frames(shared_data, "s0001", "02"), tmp_path / "s0001.avi")
    watcher = Watcher(mosquitto.host, mosquitto.port)
    relay: dict[str, FakeRelay] = {}
    events = replay(settings, clip, relay)
    watcher.wait_for("facelock/front/lock/state", b"LOCKED", 5)
    watcher.close()

    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and recognized[0]["person"] == "s0001", events
    assert recognized[0]["score"] > recognized[0]["threshold"]
    assert "unlock" in relay["front"].calls
    states = [p.decode() for p in watcher.payloads("facelock/front/lock/state")]
    assert "UNLOCKED" in states
    assert states[-1] == "LOCKED" and states.index("UNLOCKED") < len(states) - 1  # relocked after unlocking
    sent = [json.loads(p) for p in watcher.payloads("facelock/front/event")]
    assert any(e["event_type"] == "recognized" and e["person"] == "s0001" for e in sent)


def test_stranger_is_denied_and_door_never_unlocks(settings, shared_data, mosquitto, tmp_path):
    enroll(settings, shared_data, "s0001", "01")
    clip = write_clip(nuaa_frames(shared_data, "s0004", "01"), tmp_path / "s0004.avi")
    watcher = Watcher(mosquitto.host, mosquitto.port)
    relay: dict[str, FakeRelay] = {}
    events = replay(settings, clip, relay)
    time.sleep(0.5)
    watcher.close()

    assert events and all(e["event_type"] == "denied" for e in events), events
    assert "unlock" not in relay["front"].calls
    states = {p.decode() for p in watcher.payloads("facelock/front/lock/state")}
    assert states == {"LOCKED"}


def snapshot_injection(settings, shared_data, mosquitto, camera: CameraSettings) -> tuple[list[dict], FakeRelay]:
    """An anonymous broker client publishes an enrolled person's real frames, as JPEG snapshots,
    to the camera's topic at 10 fps: the decisions the running service made, and its relay."""
    enroll(settings, shared_data, "s0001", "01")
    events: list[dict] = []
    relay = FakeRelay()
    service = Service(settings, cameras=[camera], on_event=events.append, relay_factory=lambda door: relay)
    service.start()
    attacker = paho.Client(CallbackAPIVersion.VERSION2, client_id="anonymous-attacker")
    try:
        assert service.bridge.mqtt.connected.wait(10)
        attacker.connect(mosquitto.host, mosquitto.port)
        attacker.loop_start()
        time.sleep(0.5)  # the service has subscribed
        for path in nuaa_frames(shared_data, "s0001", "02"):
            attacker.publish(camera.mqtt_topic, encode_jpeg(read_image(path)), qos=1).wait_for_publish(5)
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        attacker.loop_stop()
        attacker.disconnect()
        service.stop()
    return events, relay


def test_frames_injected_on_an_untrusted_snapshot_topic_never_unlock(settings, shared_data, mosquitto):
    camera = CameraSettings(name="front", mqtt_topic="frigate/front/person/snapshot", fps=10.0)
    events, relay = snapshot_injection(settings, shared_data, mosquitto, camera)
    assert events and all(e["event_type"] == "denied" for e in events), events
    assert "untrusted source" in events[0]["reason"] and events[0]["candidate"] == "s0001"
    assert "unlock" not in relay.calls


def test_a_trusted_snapshot_topic_does_unlock(settings, shared_data, mosquitto):
    """The control: the same frames on a topic the user vouches for (broker ACL) do unlock."""
    camera = CameraSettings(name="front", mqtt_topic="frigate/front/person/snapshot", fps=10.0, trusted=True)
    events, relay = snapshot_injection(settings, shared_data, mosquitto, camera)
    assert any(e["event_type"] == "recognized" for e in events), events
    assert "unlock" in relay.calls
