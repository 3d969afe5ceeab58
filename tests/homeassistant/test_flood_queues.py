"""Hostile snapshot floods against the real service, a real Mosquitto and the real models.

A separate process floods one camera's snapshot topic with raw MQTT PUBLISH packets (as an
attacker on the network would) while a Home Assistant-like client sends lock commands, or while
genuine snapshots of an enrolled NUAA person arrive on another camera's topic. The flood must
neither delay a remote command by more than the issue's 200 ms (bounded here with headroom for
a loaded 2-core machine, printed as measured) nor stop the other camera's unlock, and the door
stays locked unless it was asked to open.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from pydantic import SecretStr
from mqtt_client import Collector, FakeRelay, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import enroll, nuaa_frames, service_settings

from facelock_mqtt.pipeline.imageio import encode_jpeg, read_image
from facelock_mqtt.service import Service
from facelock_mqtt.settings import CameraSettings, LockSettings

FLOOD_RATE = 40_000  # aimed above what the service can read (on main, from about 10,000 msg/s on)
MIN_FLOOD_RATE = 5_000  # what the flooder must reach on a loaded machine for the test to mean anything
COMMAND_BOUND_S = 1.0  # the requirement is 200 ms; the headroom is for a loaded CI machine
FLOODED, OTHER = "flooded", "other"
PIN = "2468"
LOCK = LockSettings(relock_s=1.0, unlocking_s=0.1, pin=SecretStr(PIN))

# Runs in its own process: pre-built PUBLISH packets written in 10 ms batches at the target rate.
FLOOD_SCRIPT = r"""
import socket, sys, time
host, port, topic, path, rate, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
def field(b): return len(b).to_bytes(2, "big") + b
def length(n):
    out = b""
    while True:
        n, digit = divmod(n, 128)
        out += bytes([digit | (0x80 if n else 0)])
        if not n: return out
body = field(b"MQTT") + bytes([4, 2]) + (60).to_bytes(2, "big") + field(b"flooder")
sock = socket.create_connection((host, port))
sock.sendall(bytes([0x10]) + length(len(body)) + body)
sock.recv(4)
payload = open(path, "rb").read()
# QoS 1, the attacker's best case: the broker queues QoS 1 messages for a slow subscriber.
batch = b"".join(
    bytes([0x32]) + length(2 + len(topic) + 2 + len(payload)) + field(topic.encode()) + i.to_bytes(2, "big") + payload
    for i in range(1, 101)
)
tick, sent, start = 0.01, 0, time.monotonic()
while (now := time.monotonic()) - start < seconds:
    due = (int((now - start + tick) * rate) - sent) // 100
    if due > 0:
        sock.sendall(batch * due)
        sent += 100 * due
    time.sleep(max(0.0, tick - (time.monotonic() - now)))
print(sent, time.monotonic() - start, flush=True)
"""


class Flood:
    """The flooding process; `result()` is (messages sent, seconds)."""

    def __init__(self, mosquitto, topic: str, jpeg: Path, seconds: float, rate: int = FLOOD_RATE) -> None:
        args = [mosquitto.host, str(mosquitto.port), topic, str(jpeg), str(rate), str(seconds)]
        self.proc = subprocess.Popen([sys.executable, "-c", FLOOD_SCRIPT, *args], stdout=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, float]:
        out, _ = self.proc.communicate(timeout=60)
        sent, seconds = out.split()
        return int(sent), float(seconds)


def drawn_jpeg(path: Path) -> Path:
    """A 640x480 picture with no face in it (shapes drawn here)."""
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8)
    cv2.rectangle(image, (40, 30), (300, 280), (20, 160, 220), -1)
    cv2.circle(image, (480, 300), 100, (200, 40, 40), -1)
    path.write_bytes(encode_jpeg(image))
    return path


@pytest.fixture
def service(tmp_path, mosquitto, shared_data):
    settings = service_settings(tmp_path, mosquitto).model_copy(update={"lock": LOCK})
    cameras = [
        CameraSettings(name=FLOODED, mqtt_topic=f"cams/{FLOODED}/snapshot", fps=10.0),
        CameraSettings(name=OTHER, mqtt_topic=f"cams/{OTHER}/snapshot", fps=10.0, trusted=True),
    ]
    relays: dict[str, FakeRelay] = {}
    built = {}

    def start(enrolled: bool = False) -> tuple[Service, dict[str, FakeRelay]]:
        if enrolled:
            enroll(settings, shared_data, "s0001", "01")
        built["service"] = Service(settings, cameras=cameras, relay_factory=lambda d: relays.setdefault(d, FakeRelay()))
        built["service"].start()
        assert built["service"].bridge.mqtt.connected.wait(10)
        return built["service"], relays

    yield start
    if "service" in built:
        built["service"].stop()


def commander(mosquitto) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="home-assistant")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    return client


def test_snapshot_flood_does_not_delay_remote_commands(service, mosquitto, tmp_path):
    svc, relays = service()
    ha = Collector(mosquitto.host, mosquitto.port, [f"facelock/{FLOODED}/lock/state"])
    sender = commander(mosquitto)
    flood = Flood(mosquitto, f"cams/{FLOODED}/snapshot", drawn_jpeg(tmp_path / "flood.jpg"), seconds=8.0)
    delays: list[float] = []
    try:
        source = svc.sources[FLOODED]
        wait_until(lambda: source.stats.frames_read > 2000, 10, "the flood reaching the service")
        state_topic = f"facelock/{FLOODED}/lock/state"
        unlock = json.dumps({"action": "UNLOCK", "code": PIN})
        for command, state in [(unlock, b"UNLOCKING"), ("LOCK", b"LOCKED")] * 3:
            seen = len(ha.payloads(state_topic))
            sent_at = time.monotonic()
            sender.publish(f"facelock/{FLOODED}/lock/set", command, qos=1)
            wait_until(lambda: len(ha.payloads(state_topic)) > seen, 10, f"{command} to change the lock state")
            delays.append(time.monotonic() - sent_at)
            assert ha.payloads(state_topic)[-1] == state
            time.sleep(0.3)
        sent, seconds = flood.result()
    finally:
        if flood.proc.poll() is None:
            flood.proc.kill()
        sender.loop_stop()
        ha.close()
    stats = source.stats
    print(
        f"\nflood: {sent / seconds:,.0f} msg/s sent for {seconds:.1f} s; service read {stats.frames_read}, "
        f"rate-limited {getattr(stats, 'rate_limited', 'n/a')}, decoded {stats.frames_decoded}; command delays ms: "
        f"{[round(1000 * d) for d in delays]} (median {1000 * statistics.median(delays):.0f}, max {1000 * max(delays):.0f})"
    )
    assert sent / seconds >= MIN_FLOOD_RATE
    assert max(delays) < COMMAND_BOUND_S
    assert stats.rate_limited > 0.9 * (stats.frames_read - 100)  # the topic's limit took almost all of it
    assert relays[FLOODED].calls.count("unlock") == 3
    assert svc.bridge.locks[FLOODED].state == "LOCKED"


def test_flood_on_one_camera_does_not_stop_another_cameras_unlock(service, mosquitto, shared_data, tmp_path):
    svc, relays = service(enrolled=True)
    events = Collector(mosquitto.host, mosquitto.port, [f"facelock/{OTHER}/event", f"facelock/{FLOODED}/lock/state"])
    sender = commander(mosquitto)
    flood = Flood(mosquitto, f"cams/{FLOODED}/snapshot", drawn_jpeg(tmp_path / "flood.jpg"), seconds=12.0)
    try:
        wait_until(lambda: svc.sources[FLOODED].stats.frames_read > 2000, 10, "the flood reaching the service")
        # 21 distinct frames (no repeat: stream sanity would refuse a loop), 2.1 s of a 10 fps camera.
        frames = nuaa_frames(shared_data, "s0001", "02") + nuaa_frames(shared_data, "s0001", "01")[3:]
        for jpeg in [encode_jpeg(read_image(p)) for p in frames]:
            sender.publish(f"cams/{OTHER}/snapshot", jpeg, qos=0)
            time.sleep(0.1)
        decided = lambda: [json.loads(p) for p in events.payloads(f"facelock/{OTHER}/event")]  # noqa: E731
        wait_until(lambda: any(e["event_type"] == "recognized" for e in decided()), 20, "the genuine unlock")
        flood.result()
    finally:
        if flood.proc.poll() is None:
            flood.proc.kill()
        sender.loop_stop()
        events.close()
    recognized = [e for e in decided() if e["event_type"] == "recognized"]
    assert recognized[0]["person"] == "s0001"
    assert "unlock" in relays[OTHER].calls
    assert "unlock" not in relays[FLOODED].calls  # the flood itself never opened its door
    assert {p.decode() for p in events.payloads(f"facelock/{FLOODED}/lock/state")} <= {"LOCKED"}
