"""The service under faults: corrupt snapshots, malformed commands, a full disk (a broker outage:
test_broker_outage.py)."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as paho
import pytest
from conftest import fill
from mqtt_client import FakeRelay
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import Watcher, enroll, nuaa_frames, service_settings, write_clip

from facelock_mqtt import service as service_module
from facelock_mqtt.pipeline.imageio import encode_jpeg, read_image
from facelock_mqtt.service import Service, replay_camera
from facelock_mqtt.settings import CameraSettings, DecisionSettings, LockoutSettings


@pytest.fixture
def settings(tmp_path, mosquitto):
    return service_settings(tmp_path, mosquitto)


class ResubscribingWatcher(Watcher):
    """A watcher that subscribes again after every (re)connection, as Home Assistant does."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.client.on_connect = lambda client, *_: client.subscribe([("facelock/#", 1), ("homeassistant/#", 1)])


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_corrupt_snapshots_and_malformed_commands_change_nothing(settings, shared_data, mosquitto):
    camera = CameraSettings(name="porch", mqtt_topic="frigate/porch/snapshot", fps=20.0)
    sender = paho.Client(CallbackAPIVersion.VERSION2, client_id="fault-sender")
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    # A command left retained on the broker reaches the service as a stale, retained message.
    sender.publish("facelock/porch/lock/set", b"UNLOCK", qos=1, retain=True).wait_for_publish(5)
    relays: dict[str, FakeRelay] = {}
    service = Service(settings, cameras=[camera], relay_factory=lambda door: relays.setdefault(door, FakeRelay()))
    service.start()
    watcher = Watcher(mosquitto.host, mosquitto.port)
    try:
        assert service.bridge.mqtt.connected.wait(10)
        time.sleep(0.5)  # the bridge's subscriptions are in place once connected
        good = encode_jpeg(read_image(nuaa_frames(shared_data, "s0001", "01")[0]))
        junk = [b"", b"not a jpeg", b"\xff\xd8\xff" + b"\x00" * 500, good[: len(good) // 3], good[:2] + b"garbage" * 50]
        for payload in junk:
            sender.publish("frigate/porch/snapshot", payload, qos=1).wait_for_publish(5)
            time.sleep(0.1)
        commands = [b"", b"unlock", b"UNLOCK ", b'{"action": "UNLOCK"', b"\x00\xff" * 100, b"X" * 100_000]
        for payload in commands:
            sender.publish("facelock/porch/lock/set", payload, qos=1).wait_for_publish(5)
        source = service.sources["porch"]
        assert wait_until(lambda: source.stats.undecodable >= 3, 10), source.stats
        lock = service.bridge.locks["porch"]
        assert wait_until(lambda: sum(lock.rejected.values()) >= len(commands) + 1, 10), lock.rejected
        assert all(t.is_alive() for t in service.threads), "a bad input stopped the door's thread"
        assert "unlock" not in relays["porch"].calls
        assert service.bridge.locks["porch"].state == "LOCKED"
    finally:
        sender.publish("facelock/porch/lock/set", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
        sender.loop_stop()
        sender.disconnect()
        watcher.close()
        service.stop()
    assert "UNLOCKED" not in {p.decode() for p in watcher.payloads("facelock/porch/lock/state")}


def test_a_full_disk_keeps_the_door_locked_counts_failures_and_raises_the_problem_sensor(
    tmp_path, shared_data, mosquitto, small_disk, monkeypatch
):
    """The data folder fills up mid-run: a stranger's attempts cannot be audited (so nothing can
    unlock), still count toward lockout in memory, and the door's `problem` sensor says why."""
    settings = service_settings(tmp_path, mosquitto).model_copy(
        update={
            "data_dir": small_disk("64m"),
            "lockout": LockoutSettings(max_failures=2),
            "decision": DecisionSettings(cooldown_s=1.0),
        }
    )
    enroll(settings, shared_data, "s0001", "01")  # builds the 38 MB bundle there too
    strangers = [f for who in ("s0003", "s0004", "s0005") for f in nuaa_frames(shared_data, who, "01")]
    stranger = write_clip(strangers, tmp_path / "strangers.avi")  # three people, no frame repeated
    monkeypatch.setattr(service_module, "SENSOR_PERIOD_S", 0.2)
    relays: dict[str, FakeRelay] = {}
    service = Service(
        settings, cameras=[replay_camera(str(stranger), "front", 10.0)], realtime=False,
        relay_factory=lambda door: relays.setdefault(door, FakeRelay()),
    )  # fmt: skip
    watcher = Watcher(mosquitto.host, mosquitto.port)
    try:
        service.bridge.start()
        assert service.bridge.mqtt.connected.wait(10)
        fill(settings.data_dir)
        service.start_cameras()
        assert service.wait(timeout=120)
        assert service.doors["front"].stats.errors >= 1  # the audit record could not be written
        assert service.guards.lockout.status("front").locked  # yet the failures were counted
        assert wait_until(lambda: b"ON" in watcher.payloads("facelock/front/problem"), 10)
        reasons = json.loads(watcher.payloads("facelock/front/problem/attributes")[-1])["reasons"]
        assert any("No space left on device" in r or "MB free" in r for r in reasons), reasons
        assert "unlock" not in relays["front"].calls and service.bridge.locks["front"].state == "LOCKED"
    finally:
        service.stop()
        watcher.close()
