"""No late unlocks: a genuine face seen while the broker is down is denied ("broker unavailable"),
audited, the relay never released; after the broker returns, the decision arrives marked
`late: true` with its original time, and the lock shows LOCKED. Real Mosquitto (stopped and
started again), real models, real NUAA frames."""

from __future__ import annotations

import json
import time

import pytest
from mqtt_client import Collector, FakeRelay, wait_until
from service_helpers import enroll, nuaa_frames, service_settings, write_clip

from facelock_mqtt.door import BROKER_UNAVAILABLE
from facelock_mqtt.service import Service, replay_camera


@pytest.fixture
def settings(tmp_path, mosquitto):
    return service_settings(tmp_path, mosquitto)


def test_a_genuine_face_during_an_outage_is_denied_and_reported_late(settings, shared_data, mosquitto, tmp_path):
    enroll(settings, shared_data, "s0001", "01")
    clip = write_clip(nuaa_frames(shared_data, "s0001", "02"), tmp_path / "s0001.avi")
    relays: dict[str, FakeRelay] = {}
    events: list[dict] = []
    service = Service(
        settings, cameras=[replay_camera(str(clip), "front", 10.0)], realtime=False,
        on_event=events.append, relay_factory=lambda door: relays.setdefault(door, FakeRelay()),
    )  # fmt: skip
    try:
        service.bridge.start()
        assert service.bridge.mqtt.connected.wait(10)
        mosquitto.stop()
        wait_until(lambda: not service.bridge.connected, 10, "the service to notice the outage")
        service.start_cameras()  # the whole clip is decided while the broker is down
        assert service.wait(timeout=120), "replay did not finish"
        decided_before = time.time()

        assert events, "the clip produced no decision"
        assert all(e["event_type"] == "denied" for e in events), events
        assert any(e["reason"] == BROKER_UNAVAILABLE for e in events), events  # the face that would have unlocked
        assert "unlock" not in relays["front"].calls
        assert service.bridge.locks["front"].state == "LOCKED"
        audited = [r for r in service.guards.audit.records() if r.event_type == "denied"]
        assert any(r.details["reason"] == BROKER_UNAVAILABLE for r in audited)

        mosquitto.start()
        ha = Collector(mosquitto.host, mosquitto.port, ["facelock/front/#", "homeassistant/lock/#"])
        try:
            wait_until(lambda: service.bridge.connected, 30, "the reconnect")
            sent = lambda: [json.loads(p) for p in ha.payloads("facelock/front/event")]  # noqa: E731
            wait_until(lambda: any(e["reason"] == BROKER_UNAVAILABLE for e in sent()), 30, "the late decision")
            ha.wait_for("facelock/front/lock/state", b"LOCKED", timeout=10)  # re-announced on reconnect
            # The restarted broker kept nothing (no persistence): a lock config now is a re-announcement.
            wait_until(lambda: any(m.topic.endswith("/config") for m in ha.messages), 10, "discovery re-announced")
        finally:
            ha.close()
        late = [e for e in sent() if e["reason"] == BROKER_UNAVAILABLE]
        assert all(e["late"] is True and e["event_type"] == "denied" for e in late), late
        assert all(e["timestamp"] <= decided_before for e in late)  # the time it was decided, not delivered
        assert set(ha.payloads("facelock/front/lock/state")) == {b"LOCKED"}  # never UNLOCKED, late or not
        assert "unlock" not in relays["front"].calls
    finally:
        service.stop()
