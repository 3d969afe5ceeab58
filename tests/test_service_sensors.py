"""The service's sensors against a real Mosquitto: fresh at every start (the broker keeps the
previous process's values retained), zero/unknown while a camera sends nothing, and present
again after a broker restart that lost every retained message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import Mosquitto
from mqtt_client import Collector, FakeRelay, wait_until
from service_helpers import service_settings

import facelock_mqtt.service as service_module
from facelock_mqtt.homeassistant.topics import Topics
from facelock_mqtt.pipeline.imageio import encode_jpeg
from facelock_mqtt.service import Service
from facelock_mqtt.settings import CameraSettings

TOPICS = Topics()
DOOR = "front"
MEASURED = ("fps", "gate_pass_rate", "cpu", "decision_latency")
STALE = {"fps": b"9.87", "gate_pass_rate": b"12.5", "cpu": b"55.5", "decision_latency": b"123.4"}


@pytest.fixture
def service(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[Service]:  # fmt: skip
    """A service whose one camera is an MQTT snapshot topic nobody publishes to: no frames. The
    sensor period (10 s in production) is the test's `period` parameter."""
    monkeypatch.setattr(service_module, "SENSOR_PERIOD_S", request.param)
    camera = CameraSettings(name=DOOR, mqtt_topic="test/front/snapshot")
    running = Service(service_settings(tmp_path, mosquitto), cameras=[camera], relay_factory=lambda _: FakeRelay())
    yield running
    running.stop()


def latest(collector: Collector, key: str) -> bytes | None:
    payloads = collector.payloads(TOPICS.sensor(DOOR, key))
    return payloads[-1] if payloads else None


@pytest.mark.parametrize("service", [0.5], indirect=True)
def test_start_replaces_the_previous_process_values(mosquitto: Mosquitto, service: Service) -> None:
    previous = Collector(mosquitto.host, mosquitto.port, [])
    for key, value in STALE.items():  # what the last run left on the broker
        previous.publish(TOPICS.sensor(DOOR, key), value, retain=True)
    previous.close()
    watcher = Collector(mosquitto.host, mosquitto.port, [f"{TOPICS.door(DOOR)}/sensor/#"])
    try:
        watcher.wait_for(TOPICS.sensor(DOOR, "fps"), STALE["fps"])  # the retained value arrives first
        service.start()
        wait_until(lambda: all(latest(watcher, k) not in (None, STALE[k]) for k in MEASURED), what="fresh values")
        # No frame arrives: 0 fps, no pass rate, no latency to speak of (Home Assistant: unknown).
        # Retained, start, one period: every measured key (each its own message, the period's cpu
        # may still be on its way when its fps has arrived).
        counts = lambda: [len(watcher.payloads(TOPICS.sensor(DOOR, k))) for k in MEASURED]
        wait_until(lambda: min(counts()) >= 3, what="a sensor period")
        assert {k: latest(watcher, k) for k in ("fps", "gate_pass_rate", "decision_latency")} == {
            "fps": b"0.0",
            "gate_pass_rate": b"None",
            "decision_latency": b"None",
        }
        assert float(latest(watcher, "cpu")) >= 0.0
    finally:
        watcher.close()


@pytest.mark.parametrize("service", [600.0], indirect=True)  # no periodic update during the test
def test_sensors_are_back_after_a_broker_restart(mosquitto: Mosquitto, service: Service) -> None:
    """Only the re-announcement on reconnect can bring them back here."""
    service.start()
    assert service.bridge.mqtt.connected.wait(10)
    mosquitto.stop()  # persistence off: every retained value is gone with it
    wait_until(lambda: not service.bridge.mqtt.connected.is_set(), what="the outage seen")
    mosquitto.start()
    wait_until(lambda: service.bridge.mqtt.stats["connects"] == 2, timeout=30, what="reconnect")
    watcher = Collector(mosquitto.host, mosquitto.port, [f"{TOPICS.door(DOOR)}/sensor/#"])
    try:  # a subscriber arriving now, as Home Assistant does, finds every sensor: none unknown
        wait_until(lambda: all(latest(watcher, k) is not None for k in (*MEASURED, "liveness")), what="sensors")
        assert latest(watcher, "fps") == b"0.0"
    finally:
        watcher.close()


def test_a_second_service_on_the_same_data_replaces_the_first_ones_values(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real restart: the first service measures frames (snapshots pushed to its topic), stops;
    the next one, on the same data folder, starts with 0 fps and no latency, not the old rate."""
    monkeypatch.setattr(service_module, "SENSOR_PERIOD_S", 0.5)
    camera = CameraSettings(name=DOOR, mqtt_topic="test/front/snapshot")
    settings = service_settings(tmp_path, mosquitto)
    watcher = Collector(mosquitto.host, mosquitto.port, [f"{TOPICS.door(DOOR)}/sensor/#"])
    first = Service(settings, cameras=[camera], relay_factory=lambda _: FakeRelay())
    try:
        first.start()
        assert first.bridge.mqtt.connected.wait(10)
        snapshot = encode_jpeg(np.full((240, 320, 3), 90, np.uint8))

        def measured() -> bool:
            watcher.publish(camera.mqtt_topic, snapshot)  # a camera sending frames
            return float(latest(watcher, "fps") or 0) > 0

        wait_until(measured, what="the first service measuring frames")
    finally:
        first.stop()
    flush = TOPICS.sensor(DOOR, "flush")  # after everything the first service sent
    watcher.publish(flush, "1")
    watcher.wait_for(flush)
    count = len(watcher.payloads(TOPICS.sensor(DOOR, "fps")))
    second = Service(settings, cameras=[camera], relay_factory=lambda _: FakeRelay())
    try:
        second.start()
        wait_until(lambda: len(watcher.payloads(TOPICS.sensor(DOOR, "fps"))) > count, what="the second's values")
        assert watcher.payloads(TOPICS.sensor(DOOR, "fps"))[count] == b"0.0"
        assert latest(watcher, "decision_latency") == b"None"
    finally:
        second.stop()
        watcher.close()
