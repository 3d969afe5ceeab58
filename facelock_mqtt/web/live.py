"""The live view: a door's frames as MJPEG at a few fps while a page shows them, with what the
pipeline saw drawn on them (motion region, face box, quality reasons, score against threshold).

The door keeps its latest frame only while `viewers` > 0, so an unwatched door pays nothing.
"""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
from aiohttp import web

from ..pipeline.imageio import encode_jpeg
from .common import door_view, error

BOUNDARY = "facelockframe"
DEFAULT_FPS, MAX_FPS = 4.0, 10.0
MAX_WIDTH = 960
BLUE, GREEN, RED, AMBER = (255, 160, 0), (0, 200, 0), (0, 0, 230), (0, 190, 255)


def draw(live: tuple) -> np.ndarray:
    """A copy of the frame with the motion region, the face and why it does or does not match."""
    image, region, found = live
    picture = image.copy()
    if region is not None:
        x, y, w, h = (int(v) for v in region)
        cv2.rectangle(picture, (x, y), (x + w, y + h), BLUE, 1)
    result = getattr(found, "result", None)
    if result is not None:
        x, y, w, h = (int(v) for v in result.face.box)
        match = found.match
        colour = AMBER if not result.quality.ok else GREEN if match is not None and match.accepted else RED
        cv2.rectangle(picture, (x, y), (x + w, y + h), colour, 2)
        lines = list(result.quality.reasons)
        if match is not None:
            who = match.person if match.accepted else f"nobody (closest {match.person or '-'})"  # a refusal names no one
            lines.append(f"{who} {match.score:.3f} / {match.threshold:.3f}")
        for i, line in enumerate(lines):
            cv2.putText(
                picture, line, (x, max(14, y - 6 - 16 * i)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA
            )
    if picture.shape[1] > MAX_WIDTH:
        scale = MAX_WIDTH / picture.shape[1]
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return picture


async def stream(request: web.Request) -> web.StreamResponse:
    door = door_view(request)
    try:
        fps = min(MAX_FPS, max(0.5, float(request.query.get("fps", DEFAULT_FPS))))
    except ValueError:
        return error(400, "fps must be a number")
    response = web.StreamResponse(headers={
        "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", "Cache-Control": "no-store",
    })  # fmt: skip
    await response.prepare(request)
    loop, last = asyncio.get_running_loop(), None
    door.viewers += 1
    try:
        # A still camera sends nothing new, so a closed page must be noticed without a write.
        while request.transport is not None and not request.transport.is_closing():
            live = door.live
            if live is not None and live is not last:
                last = live
                jpeg = await loop.run_in_executor(None, encode_jpeg, draw(live), 75)
                header = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                await response.write(header.encode() + jpeg + b"\r\n")
            await asyncio.sleep(1.0 / fps)
    except ConnectionResetError:  # the page went away
        return response
    finally:
        door.viewers -= 1
        if door.viewers <= 0:
            door.live = None
    return response


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/api/doors/{door}/live.mjpg", stream)
