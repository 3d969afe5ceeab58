"""Enroll from a door's camera: "look at the camera". The panel watches the door's own pipeline
for the next frames with exactly one face that passes quality, spaced apart, checks them with
liveness (when installed) and the per-photo verdicts, and holds them for the owner to confirm.

While it waits the person stands at the door, so their attempts are decided as usual: an
unknown face is denied (and counts towards the lockout), which is what the door must do; frames
the door skips (its cooldown, a lockout) are analysed here, so the capture still completes.
"""

from __future__ import annotations

import asyncio
import secrets
import time

from aiohttp import web

from ..errors import EnrollmentError, GalleryError
from .api_people import person_name, verdict_json
from .common import context, door_view, error, read_json, visitor
from .context import PanelContext

FRAMES = 3
SPACING_S = 0.4  # frames this far apart differ in pose a little: better templates
TIMEOUT_S = 20.0
KEEP_S = 300.0  # an unconfirmed capture is dropped after this
MAX_HELD = 4


def usable(result) -> bool:
    return result is not None and result.quality.ok and result.embedding is not None and result.n_faces == 1


async def collect(ctx: PanelContext, door, count: int, timeout: float) -> list[tuple]:
    """The next `count` usable (image, face) pairs the door's camera shows, or fewer at the
    timeout. A frame the door did not analyse (between attempts, in its cooldown) is analysed here."""
    frames: list[tuple] = []
    last, last_taken = None, float("-inf")
    deadline = time.monotonic() + timeout
    door.viewers += 1
    try:
        while len(frames) < count and time.monotonic() < deadline:
            live = door.live
            if live is not None and live is not last and time.monotonic() - last_taken >= SPACING_S:
                last = live
                result = getattr(live[2], "result", None) or await ctx.run(ctx.recognizer.engine.analyze, live[0])
                if usable(result):
                    frames.append((live[0], result.face))
                    last_taken = time.monotonic()
            await asyncio.sleep(0.05)
    finally:
        door.viewers -= 1
    return frames


async def capture(request: web.Request) -> web.Response:
    ctx, door = context(request), door_view(request)
    person = person_name(str((await read_json(request)).get("person", "")))
    frames = await collect(ctx, door, FRAMES, TIMEOUT_S)
    if len(frames) < FRAMES:
        return error(
            408, f"no usable face at the camera within {TIMEOUT_S:.0f} s (one person, facing it, in good light)"
        )
    liveness = "not installed"
    if ctx.liveness is not None:
        result = await ctx.run(ctx.liveness.assess, frames)
        if not result.live:
            return error(422, "liveness: " + "; ".join(result.reasons))
        liveness = "live"
    images = [(f"camera frame {i + 1}", image) for i, (image, _) in enumerate(frames)]
    verdicts = [verdict_json(v) for v in await ctx.run(ctx.recognizer.photo_verdicts, person, images)]
    now = time.monotonic()
    for key in [k for k, (held_at, _, _) in ctx.captures.items() if now - held_at > KEEP_S]:
        del ctx.captures[key]
    while len(ctx.captures) >= MAX_HELD:
        del ctx.captures[next(iter(ctx.captures))]
    key = secrets.token_urlsafe(12)
    ctx.captures[key] = (now, person, images)
    return web.json_response({"capture": key, "person": person, "verdicts": verdicts, "liveness": liveness})


async def confirm(request: web.Request) -> web.Response:
    ctx = context(request)
    name = person_name(request.match_info["name"])
    held = ctx.captures.get(request.match_info["capture"])
    if held is None or held[1] != name or time.monotonic() - held[0] > KEEP_S:
        return error(404, "no such capture (it expired, or was for someone else): look at the camera again")
    del ctx.captures[request.match_info["capture"]]
    try:
        added = await ctx.run(lambda: ctx.recognizer.enroll(name, held[2], actor=visitor(request).actor))
    except (EnrollmentError, GalleryError) as exc:  # nothing was written
        return error(422, str(exc))
    return web.json_response({"person": name, "added": added})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_post("/api/doors/{door}/capture", capture)
    router.add_post("/api/people/{name}/capture/{capture}", confirm)
