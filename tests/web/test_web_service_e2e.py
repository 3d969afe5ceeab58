"""End to end: the real Service with its panel, a real Mosquitto and the real models. A clip of
a person who is not enrolled stays locked; enrolled through the panel while the service runs, the
next clip of that person unlocks, with no restart; the live view streams while a page watches."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from conftest import free_port
from mqtt_client import FakeRelay, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from panel_helpers import camera, no_liveness, play
from service_helpers import nuaa_frames

from facelock_mqtt.service import Service
from facelock_mqtt.settings import load_settings
from facelock_mqtt.web.auth import load_token


async def watch_then_enroll(url: str, token: str, show, photos: list[tuple[str, bytes]]) -> tuple[bytes, int, dict]:
    """Open the live view, let the camera show frames, read the first whole JPEG; then enroll."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.get(url + "api/doors/front/live.mjpg?fps=5") as live:
            assert live.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            camera = asyncio.get_running_loop().run_in_executor(None, show)
            first = b""
            while b"\xff\xd9" not in first:  # the end of the first JPEG of the stream
                first += await asyncio.wait_for(live.content.read(65536), timeout=20)
            await camera
        form = aiohttp.FormData()
        for name, data in photos:
            form.add_field("image", data, filename=name, content_type="image/jpeg")
        async with session.post(url + "api/people/s0001/images", data=form) as response:
            return first, response.status, await response.json()


async def timeline(url: str, token: str) -> tuple[dict, bytes]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.get(url + "api/events?limit=1") as response:
            (latest,) = (await response.json())["events"]
        async with session.get(url + latest["snapshot"]) as response:
            return latest, await response.read()


def test_enrolled_through_the_panel_the_next_clip_unlocks_without_restart(tmp_path, mosquitto, shared_data):
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_panel_e2e"},
        lock={"relock_s": 1.0, "unlocking_s": 0.1},
        liveness=no_liveness(tmp_path),
        web={"port": free_port()},
    )
    events: list[dict] = []
    relays: dict[str, FakeRelay] = {}

    def relay_factory(door: str) -> FakeRelay:
        relays[door] = FakeRelay()
        return relays[door]

    # Distinct frames for each phase: a replayed frame is refused as a looping stream.
    session1 = [p.read_bytes() for p in nuaa_frames(shared_data, "s0001", "01")]
    session2 = [p.read_bytes() for p in nuaa_frames(shared_data, "s0001", "02")]
    photos = [(f"enroll{i}.jpg", data) for i, data in enumerate(session1[:3])]
    shown, before, after = session1[3:9], session2[:6], session2[6:]
    service = Service(settings, cameras=[camera()], on_event=events.append, relay_factory=relay_factory, panel=True)
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="panel-e2e-camera")
    try:
        service.start()
        assert service.bridge.mqtt.connected.wait(10)
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        play(publisher, before)
        time.sleep(settings.decision.window_s + 1)  # any attempt of this clip has ended
        assert "unlock" not in relays["front"].calls and not any(e["event_type"] == "recognized" for e in events)

        url = f"http://127.0.0.1:{settings.web.port}/"
        token = load_token(settings.data_dir)
        first, status, body = asyncio.run(watch_then_enroll(url, token, lambda: play(publisher, shown), photos))
        assert status == 200 and body["added"] == 3, body
        start = first.index(b"\xff\xd8")
        frame = cv2.imdecode(np.frombuffer(first[start:], np.uint8), cv2.IMREAD_COLOR)
        assert frame is not None and frame.shape[1] == 640
        wait_until(lambda: service.doors["front"].viewers == 0, 5, "the live view to detach")  # no per-frame cost

        time.sleep(settings.decision.window_s + settings.decision.cooldown_s)  # past any attempt of the shown frames
        events.clear()
        play(publisher, after)
        wait_until(lambda: any(e["event_type"] == "recognized" for e in events), 30, f"a recognised event in {events}")
        assert [e["person"] for e in events if e["event_type"] == "recognized"] == ["s0001"]
        assert service.doors["front"].live is None  # unwatched, the door keeps no frame
        assert "unlock" in relays["front"].calls
        service.snapshots.flush()
        latest, snapshot = asyncio.run(timeline(url, token))
        assert latest["outcome"] == "recognized" and latest["person"] == "s0001" and snapshot.startswith(b"\xff\xd8")
    finally:
        publisher.loop_stop()
        service.stop()


async def look_at_the_camera(url: str, token: str, show) -> tuple[int, dict, int, dict]:
    """Ask for a capture, let the camera show the person meanwhile, then confirm it."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        camera = asyncio.get_running_loop().run_in_executor(None, show)
        async with session.post(url + "api/doors/front/capture", json={"person": "s0001"}) as response:
            status, body = response.status, await response.json()
        await camera
        if status != 200:
            return status, body, 0, {}
        async with session.post(url + f"api/people/s0001/capture/{body['capture']}") as response:
            return status, body, response.status, await response.json()


def test_enroll_from_the_door_camera(tmp_path, mosquitto, shared_data):
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_capture"},
        liveness=no_liveness(tmp_path),
        web={"port": free_port()},
    )
    frames = [p.read_bytes() for p in nuaa_frames(shared_data, "s0001", "01")]
    service = Service(settings, cameras=[camera()], relay_factory=lambda door: FakeRelay(), panel=True)
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="panel-capture-camera")
    try:
        service.start()
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        url, token = f"http://127.0.0.1:{settings.web.port}/", load_token(settings.data_dir)
        show = lambda: [play(publisher, [frame]) or time.sleep(0.15) for frame in frames]  # noqa: E731
        status, body, confirmed, added = asyncio.run(look_at_the_camera(url, token, show))
    finally:
        publisher.loop_stop()
        service.stop()
    assert status == 200, body
    assert len(body["verdicts"]) == 3 and all(v["ok"] and v["crop"] for v in body["verdicts"])
    assert confirmed == 200 and added["added"] == 3


def test_replay_does_not_serve_the_panel(tmp_path, mosquitto):
    settings = load_settings(
        data_dir=tmp_path / "data",
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": "facelock_no_panel"},
        liveness=no_liveness(tmp_path),
        web={"port": free_port()},
    )
    service = Service(settings, cameras=[camera()], relay_factory=lambda door: FakeRelay())  # as `replay` builds it
    service.start()
    try:
        assert service.panel is None and service.snapshots is None
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", settings.web.port), timeout=1).close()
    finally:
        service.stop()
