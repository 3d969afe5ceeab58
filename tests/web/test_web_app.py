"""The panel's access rules (token outside the add-on, CSRF), the Doors API with the PIN rule,
Model & health, and the snapshot store's bounds."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from importlib import resources

import numpy as np
import pytest
from mqtt_client import FakeRelay
from panel_helpers import ingress_panel, make_context, panel_settings, token_panel

from facelock_mqtt.guards.audit import list_records
from facelock_mqtt.storage.snapshots import SnapshotStore
from facelock_mqtt.web.api_health import MODEL_CARD_LIMIT
from facelock_mqtt.web.auth import TOKEN_FILE, load_token
from facelock_mqtt.web.server import INGRESS_PORT, PanelServer


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def relay():
    return FakeRelay()


@pytest.fixture
def ctx(tmp_path, relay):
    context = make_context(panel_settings(tmp_path, lock={"pin": "4711"}), relay)
    yield context
    context.close()
    context.recognizer.close()


def test_token_is_created_once_owner_only(tmp_path):
    token = load_token(tmp_path)
    assert len(token) >= 32 and load_token(tmp_path) == token
    assert stat.S_IMODE(os.stat(tmp_path / TOKEN_FILE).st_mode) == 0o600


def test_token_access_bearer_cookie_redirect_and_csrf(ctx, tmp_path):
    token = load_token(tmp_path)

    async def go():
        async with token_panel(ctx, token) as client:
            anonymous = await client.get("/api/people")
            wrong = await client.get("/api/people", headers={"Authorization": "Bearer nope"})
            bearer = await client.get("/api/session", headers={"Authorization": f"Bearer {token}"})
            assert (await bearer.json())["actor"] == "local panel user (token)"
            script = await client.post("/api/doors/front/lock", headers={"Authorization": f"Bearer {token}"})
            opened = await client.get(f"/?token={token}", allow_redirects=False)
            cookie = opened.cookies["facelock_token"]
            page = await client.get("/")  # the client keeps the cookie, as a browser does
            forged = await client.post("/api/doors/front/lock")  # cookie only: a cross-site form could do this
            return (
                anonymous.status,
                wrong.status,
                bearer.status,
                script.status,
                opened,
                cookie,
                page.status,
                forged.status,
            )

    anonymous, wrong, bearer, script, opened, cookie, page, forged = run(go())
    assert (anonymous, wrong, bearer, script) == (401, 401, 200, 200)
    assert opened.status == 303 and "token" not in opened.headers["Location"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    assert page == 200 and forged == 403


def test_doors_unlock_only_with_the_pin_and_every_command_is_audited(ctx, relay):
    async def go():
        async with ingress_panel(ctx) as panel:
            await panel.page()
            doors = await (await panel.get("/api/doors")).json()
            statuses = {}
            for label, path, body in [
                ("no_pin", "/api/doors/front/unlock", {}),
                ("wrong_pin", "/api/doors/front/open", {"pin": "0000"}),
                ("bad_pin_type", "/api/doors/front/unlock", {"pin": 4711}),
                ("no_door", "/api/doors/back/unlock", {"pin": "4711"}),
                ("no_action", "/api/doors/front/explode", {"pin": "4711"}),
                ("lock", "/api/doors/front/lock", {}),
            ]:
                statuses[label] = (await panel.post(path, json=body)).status
            assert "unlock" not in relay.calls
            statuses["forged"] = (await panel.post("/api/doors/front/unlock", json={"pin": "4711"}, csrf=False)).status
            assert "unlock" not in relay.calls
            right = await panel.post("/api/doors/front/unlock", json={"pin": "4711"})
            return doors, statuses, right.status, await right.json()

    doors, statuses, status, body = run(go())
    (door,) = doors["doors"]
    assert door["name"] == "front" and door["state"] == "LOCKED" and door["pin_required"] is True
    assert statuses == {"no_pin": 403, "wrong_pin": 403, "bad_pin_type": 400, "no_door": 404, "no_action": 404,
                        "lock": 200, "forged": 403}  # fmt: skip
    assert status == 200 and body["state"] in ("UNLOCKING", "UNLOCKED") and "unlock" in relay.calls
    commands = [r.details for r in list_records(ctx.audit.path, event_type="panel_command")]
    assert [(c["action"], c["accepted"]) for c in commands] == [
        ("unlock", False),
        ("open", False),
        ("lock", True),
        ("unlock", True),
    ]
    assert commands[0]["refused"] == "code_missing" and commands[1]["refused"] == "wrong_code"
    assert all("Alice Owner" in c["actor"] for c in commands)


def test_model_card_and_health(ctx):
    ctx.metrics.add("front", {"fps": 9.8, "gate_pass_rate": 12.5, "cpu": 30.0, "decision_latency": "None"})
    ctx.audit.append("denied", camera="front", details={"reason": "test"})

    async def go():
        async with ingress_panel(ctx) as panel:
            return [await (await panel.get(p)).json() for p in ("/api/model", "/api/health")]

    model, health = run(go())
    assert model["fingerprint"] == ctx.recognizer.fingerprint and model["target_far"] == 1e-6
    thresholds = model["calibration"]["thresholds"]
    assert any(t["far"] == 1e-6 and t["n_impostor"] >= 3_000_000 for t in thresholds)
    assert model["served_threshold"]["threshold"] == ctx.recognizer.matcher.threshold.threshold
    # The default bundle's card, generated by training/ and shipped in the package, as the panel reads it.
    shipped = resources.files("facelock_mqtt.models").joinpath("default_model_card.md").read_text()
    assert model["model_card"] == "model_card.md" and model["model_card_text"] == shipped
    assert "## Benchmarks" in shipped and len(shipped) < MODEL_CARD_LIMIT  # shown whole, not cut off
    assert health["metrics"]["front"]["fps"][0][1] == 9.8 and "decision_latency" not in health["metrics"]["front"]
    assert sum(health["decisions"]["counts"]["denied"]) == 1 and health["decisions"]["counts"]["denied"][-1] == 1
    assert health["audit"]["ok"] is True and health["audit"]["records"] >= 1


def test_snapshot_store_is_owner_only_and_bounded(tmp_path):
    store = SnapshotStore(tmp_path / "snaps", retention_days=1, max_count=3)
    image = np.full((48, 64, 3), 90, np.uint8)

    class Face:
        box = np.array([4.0, 5.0, 20.0, 22.0])

    for seq in range(1, 6):
        store.save(seq, image, Face())
    store.flush()
    assert store.seqs() == [3, 4, 5] and store.box(5) == [4.0, 5.0, 20.0, 22.0]
    assert stat.S_IMODE(os.stat(tmp_path / "snaps" / "5.jpg").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "snaps").st_mode) == 0o700
    assert store.prune(now=time.time() + 2 * 86400) == 3 and store.seqs() == []
    store.close()


def test_inside_the_addon_the_panel_serves_ingress_only(ctx, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_TOKEN", "supervisor-given")
    server = PanelServer(ctx)
    assert server.ingress and (server.host, server.port) == ("0.0.0.0", INGRESS_PORT)
    assert server.access.allowed_peer == "172.30.32.2"
    assert not (ctx.settings.data_dir / TOKEN_FILE).exists()  # ingress signs users in: no token
