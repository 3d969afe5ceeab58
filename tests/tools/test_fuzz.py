"""Fuzzing in CI (fixed seeds, a few thousand inputs): every inbound MQTT payload handler and
image decoding; no crash, no unlock. The 10,000-input run is `python -m facelock_mqtt.tools.fuzz`
(docs/SECURITY.md). The last test sends generated messages through a real Mosquitto."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from mqtt_client import wait_until
from paho.mqtt.enums import CallbackAPIVersion

from facelock_mqtt.tools import fuzz
from facelock_mqtt.homeassistant.lock import LockState
from facelock_mqtt.settings import MqttSettings

SEED = 20240601


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> list[bytes]:
    return fuzz.seed_images(fuzz.default_seed_files(shared_data))


@pytest.fixture(autouse=True)
def quiet(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.ERROR)  # thousands of expected "ignored a lock command" warnings
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # and OpenCV's decoder complaints
    yield
    cv2.utils.logging.setLogLevel(level)


def outcomes_seen(report: fuzz.TargetReport) -> set[str]:
    return {key.split(":")[0] for key in report.outcomes}


def test_command_parsing_accepts_only_the_whitelist() -> None:
    strategy = st.tuples(fuzz.command_payloads(), st.booleans())
    report = fuzz.run_target("parse_command", 1500, strategy, fuzz.check_parse, SEED)
    assert report.finding is None, report.finding
    assert report.examples == 1500
    # The generator reaches both sides of the whitelist, and every reason for a refusal.
    assert {"accepted", "rejected"} <= outcomes_seen(report)
    reasons = {key.split(":")[1] for key in report.outcomes if key.startswith("rejected")}
    assert {"unknown", "not_utf8", "too_large", "bad_json", "bad_fields", "code_missing", "wrong_code"} <= reasons


def test_lock_commands_never_release_without_authority() -> None:
    check, close = fuzz.lock_checker()
    try:
        items = st.tuples(fuzz.command_payloads(), st.booleans(), st.booleans())
        report = fuzz.run_target("lock", 1500, items, check, SEED)
    finally:
        close()
    assert report.finding is None, report.finding
    # Fresh, well-formed UNLOCK/OPEN on the PIN-less lock did release it: the oracle was exercised.
    assert report.outcomes["done:UNLOCK"] + report.outcomes["done:OPEN"] > 0, report.outcomes
    assert report.outcomes["ignored"] > 1000


def test_every_bridge_handler_survives_generated_messages(tmp_path: Path, seeds: list[bytes]) -> None:
    rig = fuzz.BridgeRig.build(tmp_path)
    try:
        report = fuzz.run_target("bridge", 1500, fuzz.bridge_messages(rig, seeds), rig.check, SEED)
    finally:
        rig.close()
    assert report.finding is None, report.finding
    assert {"set", "clear", "snapshot", "status"} <= set(report.outcomes), report.outcomes
    assert rig.clears and rig.source.stats.frames_read > 0  # the fresh PRESS and snapshots got through
    assert set(rig.clears) == {"code_missing"}  # and no PRESS without the PIN cleared anything
    assert rig.bridge.locks[fuzz.DOOR].rejected["retained"] > 0


def test_image_decoding_returns_an_image_or_image_error(seeds: list[bytes]) -> None:
    report = fuzz.run_target("decode", 1200, fuzz.image_payloads(seeds), fuzz.check_decode, SEED)
    assert report.finding is None, report.finding
    assert report.outcomes["refused"] > 100 and report.outcomes["decoded+snapshot"] > 10, report.outcomes


def test_generated_messages_through_a_real_broker(tmp_path: Path, mosquitto, seeds: list[bytes]) -> None:
    """The bridge connected to Mosquitto, its snapshot source running, generated messages
    published by another client: all handled, none unlocks, nothing stops."""
    mqtt = MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id="facelock_fuzz_broker")
    rig = fuzz.BridgeRig.build(tmp_path, mqtt)
    rig.bridge.start()
    rig.source.start()
    sender = paho.Client(CallbackAPIVersion.VERSION2, client_id="fuzz-sender")
    sender.connect(mosquitto.host, mosquitto.port)
    sender.loop_start()
    command_topic, clear_topic = rig.bridge.topics.lock_command(fuzz.DOOR), rig.bridge.topics.lockout_clear(fuzz.DOOR)
    sent: Counter[str] = Counter()
    # Mosquitto drops a client that publishes to a topic with wildcards or control characters.
    printable = st.characters(categories=("L", "N", "P", "S", "Zs"), exclude_characters="#+")
    valid_topic = st.text(printable, min_size=1, max_size=30)
    topic = st.sampled_from([t for t in rig.topics if t != "#"]) | valid_topic

    @seed(SEED)
    @settings(max_examples=300, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(topic, fuzz.any_payload(seeds))
    def publish(topic: str, payload: bytes) -> None:
        sender.publish(topic, payload, qos=1).wait_for_publish(5)
        sent["all"] += 1
        sent["command"] += topic == command_topic
        sent["press"] += topic == clear_topic and payload == b"PRESS"
        sent["snapshot"] += topic == fuzz.SNAPSHOT_TOPIC and bool(payload)

    try:
        assert rig.bridge.mqtt.connected.wait(10)
        wait_until(lambda: rig.bridge.mqtt.stats["connects"] == 1, what="bridge subscribed")
        publish()
        sender.publish(clear_topic, b"PRESS", qos=1).wait_for_publish(5)  # the last one in: a sentinel
        wait_until(lambda: len(rig.clears) == sent["press"] + 1, 20, what="every message handled")
        lock = rig.bridge.locks[fuzz.DOOR]
        handled = sum(lock.rejected.values()) + rig.relay.calls.count("lock") - 1  # LOCK is accepted
        assert handled == sent["command"], (lock.rejected, sent)
        assert rig.source.stats.frames_read == sent["snapshot"]
        assert rig.bridge.mqtt.stats["handler_errors"] == 0
        assert "unlock" not in rig.relay.calls and lock.state is LockState.LOCKED
        assert rig.bridge.mqtt.connected.is_set() and not rig.source.finished
        print(f"\nthrough Mosquitto: {dict(sent)}")
    finally:
        sender.loop_stop()
        sender.disconnect()
        rig.close()
