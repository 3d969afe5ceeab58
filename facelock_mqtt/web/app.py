"""The panel's aiohttp application: access and CSRF middleware, the page, static files, the API."""

from __future__ import annotations

import html
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from . import api_capture, api_doors, api_events, api_health, api_people, live
from .auth import CSRF_HEADER, IngressAccess, TokenAccess, check_csrf
from .common import ACCESS, CONTEXT, CSRF, JSON_LIMIT, VISITOR, error, visitor
from .context import PanelContext

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admit (ingress proxy or token), check CSRF, answer API errors as JSON, set safe headers."""
    try:
        request[VISITOR] = request.app[ACCESS].admit(request)
        check_csrf(request, request[VISITOR], request.app[CSRF])
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        response = error(exc.status, exc.text or exc.reason)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Content-Security-Policy", CSP)
    return response


async def index(request: web.Request) -> web.Response:
    """The single page, with the base path and CSRF token in data attributes (no inline script)."""
    page = (STATIC / "index.html").read_text()
    page = page.replace("__BASE__", html.escape(visitor(request).base, quote=True))
    page = page.replace("__CSRF__", html.escape(request.app[CSRF], quote=True))
    page = page.replace("__LANGS__", " ".join(sorted(p.stem for p in (STATIC / "i18n").glob("*.json"))))
    response = web.Response(text=page, content_type="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


async def session(request: web.Request) -> web.Response:
    return web.json_response({"actor": visitor(request).actor, "csrf_header": CSRF_HEADER})


def create_app(ctx: PanelContext, access: IngressAccess | TokenAccess) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=ctx.settings.web.max_upload_bytes + JSON_LIMIT)
    app[CONTEXT] = ctx
    app[ACCESS] = access
    app[CSRF] = secrets.token_urlsafe(24)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
    app.router.add_get("/api/session", session)
    for module in (api_people, api_events, api_capture, api_doors, api_health, live):
        module.add_routes(app.router)
    return app
