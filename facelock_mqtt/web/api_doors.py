"""Doors: lock state and lockout, the door's figures, and lock / unlock / open from the panel.

Commands go through `DoorLock.handle_command`, the very path of Home Assistant's MQTT commands,
so the PIN rule and the wrong-PIN block are the same: nothing here can unlock without the PIN
when one is set. Every command, accepted or refused, is audited with its actor.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..guards.liveness import liveness_status
from ..homeassistant.lock import REFUSALS
from .common import context, error, read_json, visitor
from .context import PanelContext

ACTIONS = {"lock": "LOCK", "unlock": "UNLOCK", "open": "OPEN"}


def door_json(ctx: PanelContext, name: str) -> dict:
    lock, door = ctx.locks[name], ctx.doors.get(name)
    lockout = ctx.lockout.status(name)
    stats = door.stats if door is not None else None
    return {
        "name": name,
        "state": lock.state.value,
        "pin_required": lock.pin_required,
        "lockout": {
            "locked": lockout.locked,
            "remaining_s": round(lockout.remaining_s, 1),
            "failures": lockout.failures,
        },
        "sensors": ctx.metrics.latest(name),
        "frames": None if stats is None else stats.frames,
        "decisions": None if stats is None else stats.decisions,
        "last_latency_ms": None if stats is None else stats.last_latency_ms,
        "liveness": liveness_status(ctx.liveness),
        "live": f"api/doors/{name}/live.mjpg" if door is not None else None,
    }


async def list_doors(request: web.Request) -> web.Response:
    ctx = context(request)
    return web.json_response({"doors": [door_json(ctx, name) for name in ctx.locks]})


async def command(request: web.Request) -> web.Response:
    ctx = context(request)
    name, action = request.match_info["door"], request.match_info["action"]
    if name not in ctx.locks:
        return error(404, f"no door {name!r}")
    if action not in ACTIONS:
        return error(404, f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    pin = (await read_json(request)).get("pin")
    if pin is not None and not isinstance(pin, str):
        return error(400, "pin must be a string of digits")
    lock = ctx.locks[name]
    payload = ACTIONS[action] if not pin else json.dumps({"action": ACTIONS[action], "code": pin})
    before = lock.rejected.copy()
    accepted = await ctx.run(lock.handle_command, payload.encode())
    reason = next(iter(lock.rejected - before), None)
    details = {"action": action, "accepted": accepted is not None, "actor": visitor(request).actor, "refused": reason}
    await ctx.run(lambda: ctx.audit.append("panel_command", camera=name, details=details))
    if accepted is None:
        return error(403, REFUSALS.get(reason or "", f"command refused ({reason})"), state=lock.state.value)
    return web.json_response({"door": name, "action": action, "state": lock.state.value})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/doors", list_doors)
    router.add_post("/api/doors/{door}/{action:lock|unlock|open}", command)
