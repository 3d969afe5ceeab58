"""Home Assistant over MQTT against a real Mosquitto: discovery, the lock over MQTT, availability,
re-announcement, a broker restart, decisions, sensors, snapshots and the lockout button.
(TLS: test_mqtt_tls.py; the lock state machine alone: test_lock.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Mosquitto
from mqtt_client import Collector, FakeRelay, render, wait_until
from pydantic import SecretStr

from facelock_mqtt.homeassistant.bridge import HomeAssistantBridge
from facelock_mqtt.homeassistant.lock import COMMAND_TEMPLATE, LockState
from facelock_mqtt.homeassistant.topics import Topics
from facelock_mqtt.settings import LockSettings, MqttSettings

DOORS = ["front_door", "garage"]
TOPICS = Topics()
PIN = "4321"
FAST = LockSettings(relock_s=1.0, unlocking_s=0.1, allow_remote_without_pin=True)  # PIN-less remote commands on
# What Home Assistant 2024.3 accepts in these blocks (one unknown key rejects the entity).
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "sw_version"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
REQUIRED = {
    "lock": {"command_topic", "state_topic", "payload_lock", "payload_unlock", "payload_open", "state_locked"},
    "binary_sensor": {"state_topic", "device_class", "payload_on", "payload_off"},
    "event": {"state_topic", "event_types"},
    "image": {"image_topic", "content_type"},
    "sensor": {"state_topic"},
    "button": {"command_topic", "payload_press"},
}


@pytest.fixture
def relays() -> dict[str, FakeRelay]:
    return {door: FakeRelay() for door in DOORS}


def make_bridge(broker: Mosquitto, relays: dict[str, FakeRelay], lock: LockSettings = FAST, **mqtt: object):
    settings = MqttSettings(host=broker.host, port=broker.port, **mqtt)  # type: ignore[arg-type]
    return HomeAssistantBridge(settings, DOORS, lock, relays.__getitem__)


@pytest.fixture
def bridge(mosquitto: Mosquitto, relays: dict[str, FakeRelay]) -> Iterator[HomeAssistantBridge]:
    running = make_bridge(mosquitto, relays)
    running.start()
    yield running
    running.stop()


@pytest.fixture
def watcher(mosquitto: Mosquitto) -> Iterator[Collector]:
    collector = Collector(mosquitto.host, mosquitto.port, ["facelock/#", "homeassistant/#"])
    yield collector
    collector.close()


def configs(collector: Collector) -> dict[str, dict]:
    return {m.topic: json.loads(m.payload) for m in collector.messages if m.topic.endswith("/config")}


def entities_per_door() -> int:
    return 6 + 9  # lock, motion, problem, event, image, button + nine sensors (drift is the ninth)


# --- discovery -----------------------------------------------------------------------------------


def test_discovery_is_valid_for_every_entity(mosquitto: Mosquitto, relays: dict[str, FakeRelay]) -> None:
    running = make_bridge(mosquitto, relays, LockSettings(pin=SecretStr(PIN)))
    running.start()
    try:
        # `online` comes after discovery from the same client, so the broker holds every config now
        Collector(mosquitto.host, mosquitto.port, [TOPICS.availability]).wait_for(TOPICS.availability, b"online")
        late = Collector(mosquitto.host, mosquitto.port, ["homeassistant/#"])  # sees what HA sees on start
        wait_until(lambda: len(configs(late)) == entities_per_door() * len(DOORS), what="all discovery configs")
    finally:
        running.stop()
    assert all(m.retain and m.qos == 1 for m in late.messages)
    found = configs(late)
    unique_ids = [config["unique_id"] for config in found.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for topic, config in found.items():
        prefix, component, node, obj, last = topic.split("/")
        assert (prefix, last) == ("homeassistant", "config") and re.fullmatch(r"[a-z0-9_]+", obj)
        door = node.removeprefix("facelock_")
        assert door in DOORS, topic
        assert REQUIRED[component] <= set(config), topic
        assert set(config["device"]) <= DEVICE_KEYS and set(config["origin"]) <= ORIGIN_KEYS
        assert config["device"]["identifiers"] == [f"facelock_{door}"] and config["origin"]["name"] == "FaceLock"
        assert config["availability_topic"] == TOPICS.availability
        for key in ("state_topic", "command_topic", "image_topic"):
            if key in config:
                assert config[key].startswith(f"facelock/{door}/"), (topic, key)
        if "command_topic" in config:
            assert config["retain"] is False
    for door in DOORS:
        check_door_entities(door, {t: c for t, c in found.items() if f"/facelock_{door}/" in t})


def check_door_entities(door: str, found: dict[str, dict]) -> None:
    by_object = {topic.split("/")[3]: config for topic, config in found.items()}
    lock = by_object["lock"]
    assert lock["name"] is None  # takes the device name: no `lock.front_door_front_door`
    assert (lock["command_topic"], lock["state_topic"]) == (TOPICS.lock_command(door), TOPICS.lock_state(door))
    assert (lock["payload_lock"], lock["payload_unlock"], lock["payload_open"]) == ("LOCK", "UNLOCK", "OPEN")
    assert re.fullmatch(lock["code_format"], PIN) and not re.fullmatch(lock["code_format"], "12")
    rendered = render(lock["command_template"], lock["payload_unlock"], PIN)
    assert json.loads(rendered) == {"action": "UNLOCK", "code": PIN}
    assert by_object["motion"]["device_class"] == "motion" and by_object["motion"]["state_topic"] == TOPICS.motion(door)
    assert set(by_object["decision"]["event_types"]) == {
        "recognized", "denied", "spoof_suspected", "lockout", "remote_refused", "reported_not_me"
    }
    assert by_object["decision"]["state_topic"] == TOPICS.event(door)
    assert by_object["snapshot"]["content_type"] == "image/jpeg"
    assert by_object["snapshot"]["image_topic"] == TOPICS.image(door)
    assert by_object["clear_lockout"]["command_topic"] == TOPICS.lockout_clear(door)
    latency = by_object["decision_latency"]
    assert (latency["device_class"], latency["unit_of_measurement"], latency["state_class"]) == (
        "duration",
        "ms",
        "measurement",
    )
    for name in ("last_score", "fps", "gate_pass_rate", "cpu"):
        assert by_object[name]["state_class"] == "measurement"
        assert by_object[name]["state_topic"] == TOPICS.sensor(door, name)
    assert "state_class" not in by_object["last_person"]
    assert by_object["liveness"]["entity_category"] == "diagnostic"


# --- the lock over MQTT ------------------------------------------------------------------------------


def lock_states(collector: Collector, door: str = "front_door") -> list[bytes]:
    return collector.payloads(TOPICS.lock_state(door))


def wait_relocked(collector: Collector, door: str = "front_door") -> list[bytes]:
    wait_until(lambda: b"UNLOCKED" in lock_states(collector, door) or b"OPEN" in lock_states(collector, door))
    wait_until(lambda: lock_states(collector, door)[-1] == b"LOCKED", what="relock")
    states = lock_states(collector, door)
    return states[states.index(b"UNLOCKING") :]


def test_unlock_command_unlocks_then_relocks(
    bridge: HomeAssistantBridge, watcher: Collector, relays: dict[str, FakeRelay], mosquitto: Mosquitto
) -> None:
    watcher.wait_for(TOPICS.availability, b"online")
    watcher.publish(TOPICS.lock_command("front_door"), "UNLOCK")
    assert wait_relocked(watcher) == [b"UNLOCKING", b"UNLOCKED", b"LOCKED"]
    assert relays["front_door"].calls[-2:] == ["unlock", "lock"]
    assert "unlock" not in relays["garage"].calls
    late = Collector(mosquitto.host, mosquitto.port, [TOPICS.lock_state("front_door")])
    assert late.wait_for(TOPICS.lock_state("front_door"))[0].retain  # state is retained


def test_open_command_reports_open_then_relocks(bridge: HomeAssistantBridge, watcher: Collector) -> None:
    watcher.wait_for(TOPICS.availability, b"online")
    watcher.publish(TOPICS.lock_command("garage"), "OPEN")
    assert wait_relocked(watcher, "garage") == [b"UNLOCKING", b"OPEN", b"LOCKED"]


def test_face_decision_unlocks_through_unlock_for(bridge: HomeAssistantBridge, watcher: Collector) -> None:
    watcher.wait_for(TOPICS.availability, b"online")
    assert bridge.locks["front_door"].unlock_for("alice")
    assert wait_relocked(watcher) == [b"UNLOCKING", b"UNLOCKED", b"LOCKED"]


MALFORMED = [
    b"\xff\xfe\x00garbage",
    b"unlock",
    b" UNLOCK",
    b"UNLOCK\n",
    b"",
    b'{"code": "1234"}',
    b'{"action": "unlock"}',
    b'{"action": "UNLOCK", "code": 1234}',
    b'{"action": "UNLOCK", "extra": true}',
    b'["UNLOCK"]',
    b"{not json",
    b"UNLOCK" * 1000,
]


def test_malformed_commands_are_counted_and_change_nothing(
    bridge: HomeAssistantBridge, watcher: Collector, relays: dict[str, FakeRelay]
) -> None:
    watcher.wait_for(TOPICS.availability, b"online")
    for payload in MALFORMED:
        watcher.publish(TOPICS.lock_command("front_door"), payload)
    lock = bridge.locks["front_door"]
    wait_until(lambda: lock.rejected.total() == len(MALFORMED), what="every command rejected")
    assert lock.rejected["unknown"] >= 4 and lock.rejected["too_large"] == 1 and lock.rejected["bad_fields"] == 3
    assert lock.state is LockState.LOCKED and "unlock" not in relays["front_door"].calls
    assert b"UNLOCKING" not in lock_states(watcher)
    assert bridge.mqtt.stats["handler_errors"] == 0


def test_retained_command_left_on_the_broker_is_ignored(
    mosquitto: Mosquitto, relays: dict[str, FakeRelay], watcher: Collector
) -> None:
    watcher.publish(TOPICS.lock_command("front_door"), "UNLOCK", retain=True)  # e.g. a misconfigured tool
    running = make_bridge(mosquitto, relays)
    running.start()
    try:
        wait_until(lambda: running.locks["front_door"].rejected["retained"] == 1, what="retained command rejected")
        assert running.locks["front_door"].state is LockState.LOCKED
        assert relays["front_door"].calls == ["lock"]
    finally:
        running.stop()
        watcher.publish(TOPICS.lock_command("front_door"), b"", retain=True)


def test_pin_is_required_for_remote_unlock(
    mosquitto: Mosquitto, relays: dict[str, FakeRelay], watcher: Collector
) -> None:
    running = make_bridge(mosquitto, relays, LockSettings(relock_s=1, unlocking_s=0, pin=SecretStr(PIN)))
    running.start()
    try:
        watcher.wait_for(TOPICS.availability, b"online")
        command = TOPICS.lock_command("front_door")
        for payload in (b"UNLOCK", render(COMMAND_TEMPLATE, "UNLOCK", None), render(COMMAND_TEMPLATE, "OPEN", "1111")):
            watcher.publish(command, payload)
        lock = running.locks["front_door"]
        wait_until(lambda: lock.rejected.total() == 3, what="three rejections")
        assert (lock.rejected["code_missing"], lock.rejected["wrong_code"]) == (2, 1)
        assert "unlock" not in relays["front_door"].calls
        watcher.publish(command, render(COMMAND_TEMPLATE, "UNLOCK", PIN))
        assert wait_relocked(watcher) == [b"UNLOCKING", b"UNLOCKED", b"LOCKED"]
    finally:
        running.stop()


# --- availability, re-announcement, outages -----------------------------------------------------------


def test_availability_online_after_connect_offline_on_clean_stop(
    mosquitto: Mosquitto, relays: dict[str, FakeRelay], watcher: Collector
) -> None:
    running = make_bridge(mosquitto, relays)
    running.start()
    watcher.wait_for(TOPICS.availability, b"online")
    running.stop()
    watcher.wait_for(TOPICS.availability, b"offline")
    assert watcher.payloads(TOPICS.availability) == [b"online", b"offline"]
    late = Collector(mosquitto.host, mosquitto.port, [TOPICS.availability])
    assert late.wait_for(TOPICS.availability)[0].payload == b"offline"  # retained
    assert relays["front_door"].calls[-1] == "lock"  # doors locked on the way out


SERVICE = """
import sys, time
from facelock_mqtt.homeassistant.bridge import HomeAssistantBridge
from facelock_mqtt.settings import LockSettings, MqttSettings
class Relay:
    def unlock(self): pass
    def lock(self): pass
bridge = HomeAssistantBridge(MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), keepalive=60),
                             ["front_door"], LockSettings(), lambda door: Relay())
bridge.start()
if not bridge.mqtt.connected.wait(10):
    sys.exit("not connected")
print("ready", flush=True)
time.sleep(60)
"""


def test_last_will_marks_offline_when_the_process_is_killed(mosquitto: Mosquitto, watcher: Collector) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVICE, str(mosquitto.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        watcher.wait_for(TOPICS.availability, b"online")
        os.kill(proc.pid, signal.SIGKILL)  # no clean shutdown: only the will can say offline
        proc.wait(timeout=10)
        watcher.wait_for(TOPICS.availability, b"offline")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert watcher.payloads(TOPICS.availability) == [b"online", b"offline"]


def test_home_assistant_birth_triggers_reannouncement(bridge: HomeAssistantBridge, watcher: Collector) -> None:
    total = entities_per_door() * len(DOORS)
    wait_until(lambda: len([m for m in watcher.messages if m.topic.endswith("/config")]) == total)
    before = len(watcher.messages)
    watcher.publish(TOPICS.ha_status, "online")

    def fresh() -> list:
        return watcher.messages[before:]

    wait_until(lambda: len([m for m in fresh() if m.topic.endswith("/config")]) == total, what="re-announcement")
    wait_until(lambda: TOPICS.lock_state("garage") in {m.topic for m in fresh()}, what="states re-sent")
    assert {m.topic for m in fresh() if m.topic.endswith("/config")} == set(configs(watcher))


def test_broker_restart_loses_no_decision_event(tmp_path: Path, relays: dict[str, FakeRelay]) -> None:
    """Mosquitto stops mid-run and comes back on the same port. The watcher keeps a persistent
    session (saved by this broker) so that it is subscribed before the bridge is back; every
    event the bridge published before, during and after the outage must arrive, and states
    updated during the outage arrive as their latest value."""
    broker = Mosquitto(tmp_path, extra_conf=f"persistence true\npersistence_location {tmp_path}/\nuser root\n")
    broker.start()
    fps = TOPICS.sensor("front_door", "fps")
    topics = ["facelock/+/event", "homeassistant/lock/#", TOPICS.availability, fps]
    watcher = Collector(broker.host, broker.port, topics, client_id="restart-watcher", clean_session=False)
    running = make_bridge(broker, relays)
    running.start()
    sent: list[str] = []

    def received() -> set[str]:
        return {json.loads(p)["id"] for p in watcher.payloads(TOPICS.event("front_door"))}

    try:
        watcher.wait_for(TOPICS.availability, b"online")
        publish_events(running, sent, 20)
        broker.stop()
        wait_until(lambda: not running.mqtt.connected.is_set(), what="bridge sees the outage")
        publish_events(running, sent, 20)  # while the broker is down
        for value in range(50):
            running.publish_sensors("front_door", {"fps": float(value)})
        broker.start()
        publish_events(running, sent, 20)
        wait_until(lambda: running.mqtt.stats["connects"] == 2, what="reconnect")
        wait_until(lambda: watcher.payloads(TOPICS.availability).count(b"online") == 2, what="online again")
        wait_until(lambda: received() >= set(sent), timeout=30, what="every event")
        assert received() == set(sent)
        assert len(watcher.on("homeassistant/lock/facelock_front_door/lock/config")) >= 2  # re-announced
        assert watcher.payloads(fps) == [b"49.0"]  # only the latest value, sent by the re-announcement
    finally:
        running.stop()
        watcher.close()
        broker.stop()


def publish_events(bridge: HomeAssistantBridge, sent: list[str], count: int) -> None:
    for _ in range(count):
        event = {"event_type": "denied", "person": None, "score": 0.1, "camera": "front_door"}
        sent.append(bridge.publish_decision("front_door", event)["id"])
        time.sleep(0.005)


# --- decisions, sensors, snapshots, buttons -------------------------------------------------------------


def jpeg_bytes() -> bytes:
    import cv2
    import numpy as np

    image = np.full((48, 64, 3), 128, np.uint8)
    cv2.rectangle(image, (10, 8), (40, 40), (0, 255, 0), 2)  # a face box, as the service draws it
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def test_decision_event_sensors_and_snapshot(bridge: HomeAssistantBridge, watcher: Collector) -> None:
    watcher.wait_for(TOPICS.availability, b"online")
    event = {
        "event_type": "recognized",
        "person": "alice",
        "score": 0.7123,
        "threshold": 0.45,
        "far_target": 1e-5,
        "frames_used": 3,
        "latency_ms": 420.5,
        "camera": "front_door",
    }
    snapshot = jpeg_bytes()
    sent = bridge.publish_decision("front_door", event, snapshot)
    received = watcher.wait_for(TOPICS.event("front_door"))[0]
    assert (received.qos, received.retain) == (1, False)
    payload = json.loads(received.payload)
    assert payload == sent and {k: payload[k] for k in event} == event
    assert payload["door"] == "front_door" and len(payload["id"]) == 32 and payload["timestamp"] > 0
    assert watcher.wait_for(TOPICS.image("front_door"))[0].payload == snapshot
    assert watcher.wait_for(TOPICS.sensor("front_door", "last_person"))[0].payload == b"alice"
    assert watcher.wait_for(TOPICS.sensor("front_door", "last_score"))[0].payload == b"0.7123"

    bridge.publish_motion("garage", True)
    bridge.publish_sensors("garage", {"fps": 4.98765, "decision_latency": 12345.6, "cpu": 37, "liveness": "off"})
    assert watcher.wait_for(TOPICS.motion("garage"), b"ON")[0].retain is False  # live delivery
    for name, value in (("fps", b"4.9877"), ("decision_latency", b"12345.6"), ("cpu", b"37"), ("liveness", b"off")):
        assert watcher.wait_for(TOPICS.sensor("garage", name))[-1].payload == value


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.publish_decision("front_door", {"event_type": "opened"}), "event_type"),
        (lambda b: b.publish_decision("front_door", {"event_type": "denied"}, b"GIF89a"), "JPEG"),
        (lambda b: b.publish_decision("back_door", {"event_type": "denied"}), "unknown door"),
        (lambda b: b.publish_sensors("garage", {"temperature": 20}), "unknown sensor"),
        (lambda b: b.publish_sensors("garage", {"fps": float("nan")}), "finite"),
        (lambda b: b.publish_motion("attic", True), "unknown door"),
    ],
)
def test_bad_calls_raise_and_publish_nothing(
    bridge: HomeAssistantBridge, watcher: Collector, call: Callable[[HomeAssistantBridge], object], message: str
) -> None:
    watcher.wait_for(TOPICS.availability, b"online")
    with pytest.raises(ValueError, match=message):
        call(bridge)
    watcher.publish("facelock/marker", "m")
    watcher.wait_for("facelock/marker")
    assert not [m for m in watcher.messages if m.topic.endswith("/event") or m.topic.endswith("/image")]


def test_lockout_clear_button_accepts_only_press(bridge: HomeAssistantBridge, watcher: Collector) -> None:
    requests: list[str | None] = []
    bridge.on_lockout_clear("garage", requests.append)
    watcher.wait_for(TOPICS.availability, b"online")
    topic = TOPICS.lockout_clear("garage")
    for payload in (b"press", b"PRESS ", b"\x00"):
        watcher.publish(topic, payload)
    watcher.publish(topic, "PRESS")
    wait_until(lambda: requests, what="lockout clear request")
    assert requests == [None] and bridge.rejected["lockout_clear"] == 3  # FAST allows PIN-less remote actions


def test_without_a_pin_remote_unlock_and_lockout_clear_are_refused_by_default(
    mosquitto: Mosquitto, relays: dict[str, FakeRelay], watcher: Collector
) -> None:
    """The default install: no PIN, no explicit opt-in. Any broker client could send these."""
    bridge = make_bridge(mosquitto, relays, LockSettings(relock_s=1.0, unlocking_s=0.1))
    requests: list[str | None] = []
    refused: list[tuple[str, str, str]] = []
    bridge.on_lockout_clear("front_door", requests.append)
    bridge.on_remote_refused(lambda *why: refused.append(why))
    bridge.start()
    try:
        watcher.wait_for(TOPICS.availability, b"online")
        for payload in (b"UNLOCK", b"OPEN", render(COMMAND_TEMPLATE, "UNLOCK", "1234")):
            watcher.publish(TOPICS.lock_command("front_door"), payload)
        watcher.publish(TOPICS.lockout_clear("front_door"), "PRESS")
        wait_until(lambda: requests and len(refused) == 4, 30, what="every remote action refused")
        watcher.publish(TOPICS.lock_command("front_door"), "LOCK")  # locking needs no authority
        wait_until(lambda: relays["front_door"].calls.count("lock") == 2, what="LOCK accepted")
        assert "unlock" not in relays["front_door"].calls and bridge.locks["front_door"].state is LockState.LOCKED
        assert requests == ["no_pin_set"] and [r[2] for r in refused] == ["no_pin_set"] * 4
        def refusal_events() -> list[dict]:
            return [json.loads(m.payload) for m in watcher.messages if m.topic == TOPICS.event("front_door")]

        wait_until(lambda: len(refusal_events()) == 4, 30, what="four refusal events at the watcher")
        events = refusal_events()
        assert [e["event_type"] for e in events] == ["remote_refused"] * 4
        assert "allow_remote_without_pin: true" in events[0]["reason"] and "lock.pin" in events[0]["reason"]
    finally:
        bridge.stop()


def test_with_a_pin_lockout_clear_needs_the_pin(
    mosquitto: Mosquitto, relays: dict[str, FakeRelay], watcher: Collector
) -> None:
    bridge = make_bridge(mosquitto, relays, LockSettings(relock_s=1.0, unlocking_s=0.1, pin=SecretStr(PIN)))
    requests: list[str | None] = []
    bridge.on_lockout_clear("front_door", requests.append)
    bridge.start()
    try:
        watcher.wait_for(TOPICS.availability, b"online")
        topic = TOPICS.lockout_clear("front_door")
        for payload in ("PRESS", json.dumps({"action": "PRESS", "code": "0000"}), json.dumps({"action": "PRESS", "code": PIN})):
            watcher.publish(topic, payload)
        wait_until(lambda: len(requests) == 3, what="three clear requests")
        assert requests == ["code_missing", "wrong_code", None]
    finally:
        bridge.stop()


def test_snapshot_topic_feeds_fresh_payloads_and_survives_handler_errors(
    bridge: HomeAssistantBridge, watcher: Collector
) -> None:
    topic = "frigate/front_door/person/snapshot"
    watcher.publish(topic, b"stale", retain=True)  # a retained snapshot is old news
    frames: list[bytes] = []

    def handle(data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("decoder failed")
        frames.append(data)

    watcher.wait_for(TOPICS.availability, b"online")
    bridge.on_snapshot(topic, handle)
    wait_until(lambda: bridge.rejected["stale_snapshot"] == 1, what="stale snapshot skipped")
    for payload in (b"boom", b"frame-1", b"frame-2"):
        watcher.publish(topic, payload)
    wait_until(lambda: len(frames) == 2, what="fresh frames")
    assert frames == [b"frame-1", b"frame-2"] and bridge.mqtt.stats["handler_errors"] == 1
    watcher.publish(topic, b"", retain=True)


def test_a_denial_names_nobody_on_the_last_person_sensor(bridge: HomeAssistantBridge, watcher: Collector) -> None:
    """After alice was recognised, a stranger denied: "Last person" empties (no alice beside the
    stranger's score); a denial without a score makes the score unknown. A lockout, a refused
    remote command or a "that was not me" report is no face decision and changes neither."""
    watcher.wait_for(TOPICS.availability, b"online")
    person, score = TOPICS.sensor("front_door", "last_person"), TOPICS.sensor("front_door", "last_score")
    bridge.publish_decision("front_door", {"event_type": "recognized", "person": "alice", "score": 0.71})
    watcher.wait_for(person, b"alice")
    for other in ("lockout", "remote_refused", "reported_not_me"):
        bridge.publish_decision("front_door", {"event_type": other, "camera": "front_door"})
    watcher.publish("facelock/marker", "m")
    watcher.wait_for("facelock/marker")
    assert (watcher.payloads(person)[-1], watcher.payloads(score)[-1]) == (b"alice", b"0.71")
    stranger = {"event_type": "denied", "person": None, "candidate": "alice", "score": 0.41}
    sent = bridge.publish_decision("front_door", stranger)
    assert sent["person"] is None and sent["candidate"] == "alice"
    watcher.wait_for(person, b"")
    assert watcher.wait_for(score, b"0.41")[-1].retain is False  # live delivery, retained for later subscribers
    bridge.publish_decision("front_door", {"event_type": "denied", "person": None, "score": None})
    watcher.wait_for(score, b"None")  # Home Assistant's payload for `unknown`
    assert watcher.payloads(person)[-1] == b""
