"""Helpers every API module uses: the app's keys, the visitor, JSON bodies and errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .auth import Visitor
from .context import PanelContext

CONTEXT = web.AppKey("context", PanelContext)
CSRF = web.AppKey("csrf", str)
ACCESS = web.AppKey("access", object)
JSON_LIMIT = 64 * 1024
VISITOR = web.RequestKey("visitor", Visitor)


def context(request: web.Request) -> PanelContext:
    return request.app[CONTEXT]


def visitor(request: web.Request) -> Visitor:
    return request[VISITOR]


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (empty body: {}); 400 for anything else."""
    if request.content_length and request.content_length > JSON_LIMIT:
        raise web.HTTPRequestEntityTooLarge(max_size=JSON_LIMIT, actual_size=request.content_length)
    text = await request.text()
    if not text.strip():
        return {}
    try:
        body = json.loads(text)
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return body


def int_param(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{what} must be a whole number") from None


def door_view(request: web.Request):
    """The running door named in the path; 404 when there is none."""
    door = context(request).doors.get(request.match_info["door"])
    if door is None:
        raise web.HTTPNotFound(text=f"no door {request.match_info['door']!r}")
    return door
