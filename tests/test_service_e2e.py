"""End to end: a clip of real NUAA frames replayed through the live pipeline, a real Mosquitto,
the real models, and a subscriber that watches what Home Assistant would see."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mqtt_client import FakeRelay
from service_helpers import (
    Watcher,
    enroll,
    nuaa_frames,
    replay,
    service_settings,
    write_clip,
)


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
