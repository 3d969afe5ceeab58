"""A still picture fed as a stream never opens the door (issue 9, item 3).

The attack: one real live frame of an enrolled person (NUAA s0001, another session than the
enrollment), repeated with fresh sensor-like noise on every copy so that stream sanity sees no
frozen stream, and a rectangle moving beside the face so that the motion gate opens. The CNN
calls the face live (a real photograph of a live face); what stops it is that the face itself
never moves. Played through the whole service on a real Mosquitto, as a video file and as JPEG
snapshots on an MQTT camera topic; the genuine control (the same person's consecutive live
captures) unlocks through the same MQTT path.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from mqtt_client import FakeRelay
from paho.mqtt.enums import CallbackAPIVersion
from service_helpers import Watcher, enroll, nuaa_frames
from test_spoof_e2e import make_settings, replay_watched, write_images

from facelock_mqtt.cli import recognizer
from facelock_mqtt.pipeline.imageio import encode_jpeg, read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.service import Service
from facelock_mqtt.settings import CameraSettings

PERSON = "s0001"
TOPIC = "frigate/front/snapshot"
STATE = "facelock/front/lock/state"
FRAMES = 30


def still_attack(settings, shared_data: Path, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """The still picture, FRAMES times, each with fresh noise (sigma 2) and two rectangles moving
    up and down on either side of the face (the moving region then holds the face, as a person
    waving beside the picture would); and the face box of the picture."""
    frame = read_image(nuaa_frames(shared_data, PERSON, "02")[0])
    rec = recognizer(settings)
    try:
        box = max(rec.engine.faces(frame), key=frontal_rank).box
    finally:
        rec.close()
    x, y, w, h = (int(v) for v in box)
    size = w // 4
    sides = (max(x - w // 8 - size, 0), min(x + w + w // 8, frame.shape[1] - size))  # beside, never over it
    rng = np.random.default_rng(seed)
    images = []
    for i in range(FRAMES):
        image = np.clip(frame + rng.normal(0.0, 2.0, frame.shape), 0, 255).astype(np.uint8)
        top = y + int((h // 2) * (1 + np.sin(i / 2.0)))  # sweeps the face's height
        for left in sides:
            image[top : top + size, left : left + size] = (250, 250, 250)
        images.append(image)
    return images, box


def assert_refused_for_no_life(events: list[dict], relay: FakeRelay, states: list[str]) -> None:
    spoofs = [e for e in events if e["event_type"] == "spoof_suspected"]
    assert spoofs, f"the still picture was never judged by liveness: {events}"
    assert not any(e["event_type"] == "recognized" for e in events), events
    # Recognised as the enrolled person, CNN satisfied: the missing motion alone refused it.
    for event in spoofs:
        assert PERSON in (event["person"], event.get("candidate")), event
        assert "no evidence of life: the face did not move" in event["reason"], event
        assert event["liveness"] is not None and event["liveness"] >= 0.5, event
    assert "unlock" not in relay.calls
    assert set(states) <= {"LOCKED"}, states


def test_a_still_picture_as_a_video_file_never_unlocks(tmp_path, shared_data, mosquitto, liveness_models):
    settings = make_settings(tmp_path, mosquitto, liveness={"models": liveness_models})
    enroll(settings, shared_data, PERSON, "01")
    images, _ = still_attack(settings, shared_data)
    clip = write_images(images, tmp_path / "still.avi", codec="MJPG")
    events, relay, states, sensor = replay_watched(settings, mosquitto, clip)
    print("\nstill clip -> " + json.dumps([(e["event_type"], e["liveness"], e["reason"]) for e in events]))
    assert sensor and sensor[-1].startswith("on:"), sensor  # liveness really was on
    assert_refused_for_no_life(events, relay, states)


def snapshot_camera() -> CameraSettings:
    """An MQTT snapshot camera; trusted, so that liveness and not the source's trust is tested."""
    assert "trusted" in CameraSettings.model_fields
    return CameraSettings(name="front", mqtt_topic=TOPIC, fps=10.0, trusted=True)


def publish_snapshots(settings, mosquitto, images: list[np.ndarray]) -> tuple[list[dict], FakeRelay, list[str]]:
    """Run the service with an MQTT camera, publish `images` as JPEG snapshots at 10 fps."""
    relays: dict[str, FakeRelay] = {}
    events: list[dict] = []
    service = Service(
        settings, cameras=[snapshot_camera()], on_event=events.append,
        relay_factory=lambda door: relays.setdefault(door, FakeRelay()),
    )  # fmt: skip
    sender = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"snapshots-{time.monotonic_ns()}")
    watcher = Watcher(mosquitto.host, mosquitto.port)
    service.start()
    try:
        assert service.bridge.mqtt.connected.wait(10)
        sender.connect(mosquitto.host, mosquitto.port)
        sender.loop_start()
        time.sleep(0.5)  # the bridge's subscriptions are in place once connected
        for image in images:
            sender.publish(TOPIC, encode_jpeg(image), qos=1).wait_for_publish(5)
            time.sleep(0.1)
        deadline = time.monotonic() + 10
        while not events and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # a decision's relock, and any later decision of the same frames
    finally:
        sender.loop_stop()
        sender.disconnect()
        service.stop()
        watcher.close()
    return events, relays["front"], [p.decode() for p in watcher.payloads(STATE)]


def test_a_still_picture_as_mqtt_snapshots_never_unlocks(tmp_path, shared_data, mosquitto, liveness_models):
    settings = make_settings(tmp_path, mosquitto, liveness={"models": liveness_models})
    enroll(settings, shared_data, PERSON, "01")
    images, _ = still_attack(settings, shared_data)
    events, relay, states = publish_snapshots(settings, mosquitto, images)
    print("\nstill snapshots -> " + json.dumps([(e["event_type"], e["liveness"], e["reason"]) for e in events]))
    assert_refused_for_no_life(events, relay, states)


def test_the_person_in_person_unlocks_through_the_same_snapshot_topic(
    tmp_path, shared_data, mosquitto, liveness_models
):
    """The control: the same camera, topic and person, live consecutive captures: it unlocks."""
    settings = make_settings(tmp_path, mosquitto, liveness={"models": liveness_models})
    enroll(settings, shared_data, PERSON, "01")
    images = [read_image(p) for p in nuaa_frames(shared_data, PERSON, "02")]
    events, relay, states = publish_snapshots(settings, mosquitto, images)
    print("\nlive snapshots -> " + json.dumps([(e["event_type"], e["liveness"], e["reason"]) for e in events]))
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and recognized[0]["person"] == PERSON, events
    assert recognized[0]["liveness"] is not None, events  # judged by the models, not skipped
    assert "unlock" in relay.calls and "UNLOCKED" in states
