"""Helpers for the panel's tests: a PanelContext of real parts (Recognizer with the real models,
audit trail, lockout, door lock with the FakeRelay) and aiohttp's test client behind it."""

from __future__ import annotations

import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from mqtt_client import FakeRelay
from service_helpers import nuaa_frames

from facelock_mqtt.guards.audit import AUDIT_FILE, AuditLog
from facelock_mqtt.guards.lockout import Lockout
from facelock_mqtt.homeassistant.lock import DoorLock
from facelock_mqtt.recognizer import Recognizer
from facelock_mqtt.settings import CameraSettings, Settings, load_settings
from facelock_mqtt.storage.snapshots import SNAPSHOT_DIR, SnapshotStore
from facelock_mqtt.web import MetricsHistory, PanelContext
from facelock_mqtt.web.app import create_app
from facelock_mqtt.web.auth import IngressAccess, TokenAccess

INGRESS_PATH = "/api/hassio_ingress/abc123"
HA_USER = {"X-Remote-User-Name": "alice_owner", "X-Remote-User-Display-Name": "Alice Owner", "X-Remote-User-Id": "u42"}


def no_liveness(tmp_path: Path) -> dict:
    """Liveness off for tests that are not about it, whichever way the settings express it."""
    fields = Settings.model_fields["liveness"].annotation.model_fields
    return {"required": False} if "required" in fields else {"models": tmp_path / "no-liveness"}


def panel_settings(tmp_path: Path, **overrides) -> Settings:
    return load_settings(data_dir=tmp_path / "data", liveness=no_liveness(tmp_path), **overrides)


def make_context(settings: Settings, relay: FakeRelay | None = None) -> PanelContext:
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    audit = AuditLog(data_dir / AUDIT_FILE, settings.audit)
    recognizer = Recognizer(data_dir, settings.model, settings.quality, settings.match, audit=audit)
    notified: list[tuple[str, dict]] = []
    ctx = PanelContext(
        settings=settings,
        recognizer=recognizer,
        audit=audit,
        locks={"front": DoorLock("front", settings.lock, relay or FakeRelay())},
        doors={},
        lockout=Lockout(settings.lockout, data_dir / "lockout.json"),
        liveness=None,
        snapshots=SnapshotStore(data_dir / SNAPSHOT_DIR, settings.audit.retention_days),
        metrics=MetricsHistory(),
        notify=lambda door, event: notified.append((door, event)),
    )
    ctx.notified = notified  # what Home Assistant would have been sent
    return ctx


class Panel:
    """The test client as the panel's own page uses it: base path, CSRF header, HA user."""

    def __init__(self, client: TestClient, base: str, headers: dict[str, str]) -> None:
        self.client, self.base, self.headers = client, base, headers
        self.csrf = ""

    async def page(self) -> str:
        response = await self.client.get("/", headers=self.headers)
        assert response.status == 200, await response.text()
        text = await response.text()
        self.csrf = re.search(r'data-csrf="([^"]+)"', text).group(1)
        return text

    def _headers(self, csrf: bool) -> dict[str, str]:
        return {**self.headers, **({"X-FaceLock-CSRF": self.csrf} if csrf else {})}

    async def get(self, path: str, **kw):
        return await self.client.get(path, headers=self.headers, **kw)

    async def post(self, path: str, csrf: bool = True, **kw):
        return await self.client.post(path, headers=self._headers(csrf), **kw)

    async def delete(self, path: str, csrf: bool = True):
        return await self.client.delete(path, headers=self._headers(csrf))

    async def upload(self, name: str, photos: list[tuple[str, bytes]], check: bool = False):
        form = FormData()
        for filename, data in photos:
            form.add_field("image", data, filename=filename, content_type="application/octet-stream")
        return await self.post(f"/api/people/{name}/images" + ("?check=1" if check else ""), data=form)


@asynccontextmanager
async def ingress_panel(ctx: PanelContext, peer: str = "127.0.0.1"):
    """The panel as Home Assistant's ingress proxy reaches it (the test client connects from
    127.0.0.1, so that is the admitted proxy address here)."""
    client = TestClient(TestServer(create_app(ctx, IngressAccess(allowed_peer=peer))))
    await client.start_server()
    try:
        panel = Panel(client, INGRESS_PATH, {"X-Ingress-Path": INGRESS_PATH, **HA_USER})
        yield panel
    finally:
        await client.close()


@asynccontextmanager
async def token_panel(ctx: PanelContext, token: str):
    client = TestClient(TestServer(create_app(ctx, TokenAccess(token))))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def jpeg(path: Path, scale: float = 1.0) -> bytes:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if scale != 1.0:
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def nuaa_photos(shared_data: Path, identity: str, session: str, count: int = 3) -> list[tuple[str, bytes]]:
    frames = nuaa_frames(shared_data, identity, session)[:count]
    return [(p.name, jpeg(p)) for p in frames]


TOPIC = "test/front/snapshot"


def camera() -> CameraSettings:
    trusted = {"trusted": True} if "trusted" in CameraSettings.model_fields else {}  # the topic is this test's own
    return CameraSettings(name="front", mqtt_topic=TOPIC, fps=10.0, **trusted)


def play(client: paho.Client, frames: list[bytes]) -> None:
    for data in frames:
        client.publish(TOPIC, data, qos=0)
        time.sleep(0.1)
