"""Who may use the panel, who they are, and CSRF protection.

Inside the add-on (`IngressAccess`): Home Assistant's ingress proxy has already authenticated
the user, so only requests from the Supervisor's proxy address are admitted; the base path of
every link comes from `X-Ingress-Path`, and the actor recorded in the audit trail from the
`X-Remote-User-*` headers the proxy sets.

Outside (`TokenAccess`): a random token kept in `<data_dir>/web-token` (0600). Scripts send it as
`Authorization: Bearer <token>`. A browser opens `/?token=<token>` once (the URL is in the log):
that request sets an HttpOnly, SameSite=Strict cookie and redirects to the same page without the
token, so the token leaves the address bar and the history.

CSRF: a state-changing request (POST, PUT, PATCH, DELETE) authenticated by a cookie (the browser
sends those by itself, also for a page on another site) must carry the `X-FaceLock-CSRF` header
with this process's token, which only the panel's own page knows. A request with a bearer
header cannot be forged by another site and needs no CSRF header.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..storage.files import secure_file, write_private

log = logging.getLogger(__name__)

INGRESS_PROXY = "172.30.32.2"  # the Supervisor's ingress proxy; nothing else may reach the add-on panel
TOKEN_FILE = "web-token"
TOKEN_COOKIE = "facelock_token"
CSRF_HEADER = "X-FaceLock-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BASE_PATH = re.compile(r"^(/[A-Za-z0-9._~\-]+){0,8}$")
HEADER_TEXT = re.compile(r"[^\w .@'\-]")


@dataclass(frozen=True)
class Visitor:
    actor: str  # recorded in the audit trail for every change this visitor makes
    base: str  # path prefix of every link and asset ("" outside ingress)
    bearer: bool  # authenticated by an Authorization header: no CSRF risk


def load_token(data_dir: Path) -> str:
    """The panel's token, created once (owner-only) and kept across restarts."""
    path = Path(data_dir) / TOKEN_FILE
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32).encode())
    secure_file(path, create=False)
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path} holds no usable token; delete it and restart to make a new one")
    return token


def _header(request: web.Request, name: str) -> str:
    return HEADER_TEXT.sub("", request.headers.get(name, ""))[:80].strip()


class IngressAccess:
    def __init__(self, allowed_peer: str = INGRESS_PROXY) -> None:
        self.allowed_peer = allowed_peer  # a constructor argument for tests only, never a user setting

    def admit(self, request: web.Request) -> Visitor:
        if request.remote != self.allowed_peer:
            log.warning("panel: refused a request from %s (only the ingress proxy may connect)", request.remote)
            raise web.HTTPForbidden(text="FaceLock's panel is reached through Home Assistant only\n")
        base = request.headers.get("X-Ingress-Path", "").rstrip("/")
        if not BASE_PATH.fullmatch(base):
            raise web.HTTPBadRequest(text="bad X-Ingress-Path\n")
        name, display = _header(request, "X-Remote-User-Name"), _header(request, "X-Remote-User-Display-Name")
        user_id = _header(request, "X-Remote-User-Id")
        actor = f"{display or name or 'unknown user'} (Home Assistant user {name or '?'}, id {user_id or '?'})"
        return Visitor(actor, base, bearer=False)


class TokenAccess:
    def __init__(self, token: str) -> None:
        self.token = token

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def admit(self, request: web.Request) -> Visitor:
        actor = "local panel user (token)"
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer ") and self._valid(authorization[7:].strip()):
            return Visitor(actor, "", bearer=True)
        if "token" in request.query and request.method == "GET" and self._valid(request.query["token"]):
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.HTTPSeeOther(request.rel_url.with_query(query))
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            raise response
        if self._valid(request.cookies.get(TOKEN_COOKIE)):
            return Visitor(actor, "", bearer=False)
        raise web.HTTPUnauthorized(text="open the panel URL printed in FaceLock's log (it carries the token)\n")


def check_csrf(request: web.Request, visitor: Visitor, csrf_token: str) -> None:
    if request.method in SAFE_METHODS or visitor.bearer:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), csrf_token.encode()):
        raise web.HTTPForbidden(text=f"missing or wrong {CSRF_HEADER} header\n")
