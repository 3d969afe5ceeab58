"""The panel's server: the aiohttp app on an event loop of its own, in a thread of its own."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from aiohttp import web

from ..errors import ConfigError
from .app import create_app
from .auth import INGRESS_PROXY, IngressAccess, TokenAccess, load_token
from .context import PanelContext

log = logging.getLogger(__name__)

INGRESS_PORT = 8099  # config.yaml's ingress_port (the Supervisor's default, so not written there)
START_TIMEOUT_S = 15.0


class PanelServer:
    """`start()` serves the panel until `stop()`; inside the add-on behind ingress, else with a token."""

    def __init__(
        self, ctx: PanelContext, ingress: bool | None = None, allowed_peer: str = INGRESS_PROXY, port: int | None = None
    ) -> None:
        """`ingress` defaults to "inside the add-on" (SUPERVISOR_TOKEN set); `allowed_peer` and
        `port` are for tests only (the ingress proxy's address and port are not user settings)."""
        self.ctx = ctx
        self.ingress = bool(os.environ.get("SUPERVISOR_TOKEN")) if ingress is None else ingress
        web_settings = ctx.settings.web
        if self.ingress:
            self.access: IngressAccess | TokenAccess = IngressAccess(allowed_peer)
            self.host, self.port = "0.0.0.0", port or INGRESS_PORT
        else:
            self.access = TokenAccess(load_token(ctx.settings.data_dir))
            self.host, self.port = web_settings.host, port or web_settings.port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="facelock-panel", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._failure is not None:
            raise ConfigError(f"web: the panel cannot listen on {self.host}:{self.port} ({self._failure})")
        if self.ingress:
            log.info("panel: serving Home Assistant ingress on port %d", self.port)
        else:
            log.info("panel: open http://%s:%d/?token=%s", self.host, self.port, self.access.token)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._listen())
        except (OSError, RuntimeError) as exc:
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _listen(self) -> None:
        self._runner = web.AppRunner(create_app(self.ctx, self.access), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.ctx.close()

    @classmethod
    def for_service(cls, service: object) -> PanelServer:
        """The panel of a running `facelock_mqtt.service.Service`."""
        return cls(panel_context(service))


def panel_context(service: object) -> PanelContext:
    """The panel's handles on a `facelock_mqtt.service.Service`'s live objects."""
    guards = service.guards
    return PanelContext(
        settings=service.settings,
        recognizer=service.recognizer,
        audit=guards.audit,
        locks=service.bridge.locks,
        doors=service.doors,
        lockout=guards.lockout,
        liveness=guards.liveness,
        snapshots=service.snapshots,
        metrics=service.metrics,
        notify=service.bridge.publish_decision,
    )
