"""Remote verification end to end: a real Mosquitto (MQTT 5), `facelock worker` processes each
with its own data dir, the real service replaying NUAA clips in `verify.mode: remote`, and a
rogue broker client that joins the workers' group to forge and replay answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from mqtt_client import FakeRelay, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from service_helpers import enroll, nuaa_frames, write_clip

from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.remote.protocol import ANSWER, GALLERY, gallery_body, seal
from facelock_mqtt.service import Service, replay_camera
from facelock_mqtt.settings import load_settings

SECRET = "remote-verification-test-secret"
DEADLINE_S = 2.0
PERSON = "s0001"
GROUP = "doors"


def door_settings(tmp_path: Path, mosquitto, liveness: Path | None):
    live = {"models": liveness} if liveness else {"models": tmp_path / "none", "required": False}
    return load_settings(
        data_dir=tmp_path / "door",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_remote"},
        lock={"relock_s": 1.0, "unlocking_s": 0.1},
        liveness=live,
        verify={"mode": "remote", "secret": SECRET, "deadline_s": DEADLINE_S, "group": GROUP},
    )


class WorkerProcess:
    """`facelock worker` in a process of its own, with its own data dir."""

    def __init__(self, name: str, tmp_path: Path, mosquitto, bundle: Path, liveness: Path | None) -> None:
        data = tmp_path / name
        data.mkdir()
        env = {
            **os.environ,
            "FACELOCK_DATA_DIR": str(data),
            "FACELOCK_OPTIONS_FILE": str(data / "no-options.json"),
            "FACELOCK_MQTT__HOST": mosquitto.host,
            "FACELOCK_MQTT__PORT": str(mosquitto.port),
            "FACELOCK_MODEL__BUNDLE": str(bundle),
            "FACELOCK_MODEL__THREADS": "1",
            "FACELOCK_LIVENESS__MODELS": str(liveness or data / "none"),
            "FACELOCK_VERIFY__SECRET": SECRET,
            "FACELOCK_VERIFY__GROUP": GROUP,
        }
        self.log = data / "worker.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "facelock_mqtt.cli", "worker", "--client-id", name],
                env=env, stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if "ready" in line:
                self.ready.set()

    def wait_ready(self) -> None:
        if not self.ready.wait(120):
            raise AssertionError(f"worker did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def start_workers(
    names: list[str], tmp_path: Path, mosquitto, bundle: Path, liveness: Path | None
) -> list[WorkerProcess]:
    workers = [WorkerProcess(n, tmp_path, mosquitto, bundle, liveness) for n in names]
    for worker in workers:
        worker.wait_ready()
    return workers


def run_clip(settings, clip: Path, before_cameras=None) -> tuple[list[dict], FakeRelay, Service]:
    """Replay `clip` through the real service; `before_cameras(service)` runs once the remote
    client is connected and has published the gallery, before the first frame."""
    events: list[dict] = []
    relays: dict[str, FakeRelay] = {}
    service = Service(settings, cameras=[replay_camera(str(clip), "front", 10.0)], realtime=False,
                      on_event=events.append, relay_factory=lambda door: relays.setdefault(door, FakeRelay()))  # fmt: skip
    try:
        service.bridge.start()
        assert service.bridge.mqtt.connected.wait(10)
        service.remote.client.start()
        service.remote.publish_gallery(service.recognizer.matcher)
        if before_cameras is not None:
            before_cameras(service)
        service.start_cameras()
        assert service.wait(timeout=120), "replay did not finish"
        time.sleep(1.2)  # the relock timer
    finally:
        service.stop()
    return events, relays["front"], service


@pytest.fixture
def enrolled(tmp_path, shared_data, mosquitto):
    """(settings factory, the door's bundle folder, a live clip of the enrolled person)."""

    def settings(liveness: Path | None = None):
        return door_settings(tmp_path, mosquitto, liveness)

    enroll(settings(), shared_data, PERSON, "01")
    bundle = default_bundle(tmp_path / "door").path  # built once at enrollment; the workers load it
    clip = write_clip(nuaa_frames(shared_data, PERSON, "02"), tmp_path / "live.avi")
    return settings, bundle, clip


def test_an_enrolled_person_unlocks_through_workers_and_is_denied_when_none_is_left(
    enrolled, tmp_path, mosquitto, liveness_models
):
    settings, bundle, clip = enrolled
    settings = settings(liveness_models)  # the door holds no liveness models, only their calibration
    assert not (settings.data_dir / "liveness").exists()
    workers = start_workers(["w1", "w2"], tmp_path, mosquitto, bundle, liveness_models)
    answers = Recorder(mosquitto, ["facelock/verify/answer/#"])
    try:
        events, relay, service = run_clip(settings, clip)
    finally:
        answers.close()
    print(
        "\nthrough workers -> "
        + json.dumps([(e["event_type"], e["score"], e["liveness"], e["reason"]) for e in events])
    )
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and recognized[0]["person"] == PERSON, events
    assert recognized[0]["liveness"] is not None and recognized[0]["life_motion"] is not None  # fused at the door
    assert "unlock" in relay.calls
    bodies = [json.loads(m.payload)["body"] for m in answers.messages]
    assert bodies and {b["worker"] for b in bodies} <= {"w1", "w2"} and all(b["ok"] for b in bodies), bodies
    assert all(b["liveness"] is not None for b in bodies)

    for worker in workers:
        worker.stop()
    started = time.monotonic()
    events, relay, service = run_clip(settings, clip)
    print("no worker -> " + json.dumps([(e["event_type"], e["latency_ms"], e["reason"]) for e in events]))
    assert events and all(e["event_type"] == "denied" for e in events), events
    assert "no worker answered" in events[0]["reason"], events
    assert events[0]["latency_ms"] < 1000 * (DEADLINE_S + 2.0), events  # denied at the deadline, not later
    assert time.monotonic() - started < 60
    assert "unlock" not in relay.calls
    assert service.remote.client.stats["no_answer"] >= 1


class Recorder:
    """An MQTT 5 broker client recording messages with their properties (correlation data)."""

    def __init__(self, mosquitto, filters: list[str], on_message=None) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.on_message = on_message
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"rogue-{time.monotonic_ns()}", protocol=paho.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect(mosquitto.host, mosquitto.port)
        for topic_filter in filters:
            self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()
        time.sleep(0.3)  # subscribed before anything is published

    def _on_message(self, client, userdata, message) -> None:
        self.messages.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def publish(self, topic: str, payload: bytes, correlation: bytes | None, retain: bool = False) -> None:
        properties = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            properties.CorrelationData = correlation
        self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_forged_and_replayed_answers_never_unlock(enrolled, tmp_path, mosquitto):
    settings, bundle, clip = enrolled
    settings = settings()
    workers = start_workers(["w1"], tmp_path, mosquitto, bundle, None)
    recorded = Recorder(mosquitto, ["facelock/verify/answer/#"])
    try:
        events, relay, _ = run_clip(settings, clip)
    finally:
        recorded.close()
    workers[0].stop()
    assert any(e["event_type"] == "recognized" for e in events) and "unlock" in relay.calls, events
    genuine = [(m.payload, m.properties.CorrelationData) for m in recorded.messages]
    assert genuine

    def attack(request: paho.MQTTMessage) -> None:
        """Answer every request at once: forged (wrong key, unsigned) with top scores, and replays
        of the genuine answers with their own and with the new correlation data."""
        reply_to, correlation = request.properties.ResponseTopic, request.properties.CorrelationData
        rows = json.loads(request.payload)["body"]["crops"]
        body = {"ok": True, "worker": "rogue", "bundle": json.loads(request.payload)["body"]["bundle"],
                "gallery": json.loads(request.payload)["body"]["gallery"], "liveness": None,
                "scores": [[1.0] * 3 for _ in rows]}  # fmt: skip
        rogue.publish(
            reply_to, seal(b"the-attackers-own-secret-guess", ANSWER, correlation.decode(), body), correlation
        )
        unsigned = json.dumps(
            {"kind": ANSWER, "correlation": correlation.decode(), "ts": time.time(), "body": body, "sig": "0" * 64}
        )
        rogue.publish(reply_to, unsigned.encode(), correlation)
        for payload, old in genuine:
            rogue.publish(reply_to, payload, old)
            rogue.publish(reply_to, payload, correlation)

    rogue = Recorder(mosquitto, [f"$share/{GROUP}/facelock/verify"], on_message=attack)
    try:
        events, relay, service = run_clip(settings, clip)
    finally:
        rogue.close()
    requests = len(rogue.messages)
    assert requests >= 1 and events, events
    assert all(e["event_type"] == "denied" and "no worker answered" in e["reason"] for e in events), events
    assert "unlock" not in relay.calls
    assert service.remote.client.stats["refused"] >= 2 + 2 * len(genuine), (
        service.remote.client.stats
    )  # one round at least


def test_a_worker_holding_another_gallery_version_is_denied(enrolled, tmp_path, mosquitto):
    settings, bundle, clip = enrolled
    settings = settings()
    workers = start_workers(["w1"], tmp_path, mosquitto, bundle, None)

    def stale_gallery(service: Service) -> None:
        """A genuine, signed gallery of another version takes the retained slot (as an old
        service's would): the worker holds it, the door asks for its own."""
        matcher = service.recognizer.matcher
        other = gallery_body(service.recognizer.fingerprint, ["someone else"] * len(matcher.people), matcher.templates)
        payload = seal(SECRET.encode(), GALLERY, other["digest"], other)
        rogue.publish("facelock/verify/gallery", payload, None, retain=True)
        wait_until(lambda: _worker_saw(workers[0], other["digest"]), 10, "the worker took the other gallery")

    rogue = Recorder(mosquitto, [])
    try:
        events, relay, _ = run_clip(settings, clip, before_cameras=stale_gallery)
    finally:
        rogue.close()
        workers[0].stop()
    assert events and all(e["event_type"] == "denied" for e in events), events
    assert "gallery version mismatch" in events[0]["reason"], events
    assert "unlock" not in relay.calls


def _worker_saw(worker: WorkerProcess, digest: str) -> bool:
    return f"gallery {digest[:12]}" in worker.log.read_text()


def test_auto_mode_verifies_locally_when_no_worker_answers(enrolled, tmp_path, mosquitto):
    settings, _, clip = enrolled
    settings = load_settings(
        **{**settings().model_dump(), "verify": {"mode": "auto", "secret": SECRET, "deadline_s": 0.5}}
    )
    events, relay, service = run_clip(settings, clip)
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and recognized[0]["person"] == PERSON, events
    assert "unlock" in relay.calls
    assert service.remote.client.stats["no_answer"] >= 1  # it did ask the workers first


def test_a_printed_photo_is_refused_by_the_liveness_the_workers_score(
    enrolled, tmp_path, mosquitto, shared_data, liveness_models
):
    from test_spoof_e2e import ATTACK_FPS, print_attack_frames

    settings, bundle, _ = enrolled
    settings = settings(liveness_models)
    clip = write_clip(print_attack_frames(shared_data, PERSON), tmp_path / "print.avi", fps=ATTACK_FPS)
    workers = start_workers(["w1", "w2"], tmp_path, mosquitto, bundle, liveness_models)
    try:
        events, relay, _ = run_clip(settings, clip)
    finally:
        for worker in workers:
            worker.stop()
    assert events and {e["event_type"] for e in events} <= {"spoof_suspected", "denied"}, events
    assert any(e["event_type"] == "spoof_suspected" and e["candidate"] == PERSON for e in events), events
    assert "unlock" not in relay.calls


def test_after_a_broker_restart_the_door_publishes_its_gallery_again(enrolled, tmp_path, mosquitto):
    """The restarted broker (no persistence) has lost the retained gallery; a worker that starts
    only then can answer only if the door published the gallery again after its reconnect."""
    settings, bundle, clip = enrolled
    settings = settings()
    workers: list[WorkerProcess] = []

    def restart_broker(service: Service) -> None:
        first = service.remote.client._gallery
        assert first is not None  # run_clip published it before this hook
        mosquitto.stop()
        wait_until(lambda: not service.remote.client.link.connected.is_set(), 10, "the door to notice the outage")
        mosquitto.start()
        wait_until(lambda: service.remote.client.link.connected.is_set(), 30, "the door to reconnect")
        retained = Recorder(mosquitto, ["facelock/verify/gallery"])
        retained.close()
        assert not retained.messages, "the restarted broker still held a gallery: the test proves nothing"
        workers.extend(start_workers(["late"], tmp_path, mosquitto, bundle, None))

    try:
        events, relay, service = run_clip(settings, clip, before_cameras=restart_broker)
    finally:
        for worker in workers:
            worker.stop()
    assert workers, "the broker restart hook did not run"
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and recognized[0]["person"] == PERSON, events
    assert "unlock" in relay.calls
    assert _worker_saw(workers[0], service.remote.client._gallery), workers[0].log.read_text()[-1500:]
