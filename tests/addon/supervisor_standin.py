"""A stand-in for the Home Assistant Supervisor's services API, on loopback.

It answers what FaceLock asks at start, `GET /services/mqtt`, the way the Supervisor does
(supervisor/api/middleware/security.py and api/services.py): no token is 401, a token that is
not the add-on's is 403, the add-on's own token (`Authorization: Bearer <token>`) gets the
service answer (`{"result": "ok", "data": {"host": ..., "port": ..., "username": ...}}`), any
other path is 404. Every request is recorded: (path, Authorization header, status).

Importable by tests (`SupervisorStandin(token, answer).start()`, in a thread of its own) and
runnable as a script, for scripts/image-check.sh:

    python tests/addon/supervisor_standin.py --port P --token T --answer-json FILE

It needs only aiohttp, which FaceLock itself depends on, so the add-on image's own Python runs
it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Self

from aiohttp import web

MQTT_PATH = "/services/mqtt"


def mqtt_answer(host: str, port: int, username: str | None = None, password: str | None = None) -> dict[str, Any]:
    """The Supervisor's answer when the Mosquitto add-on provides the MQTT service."""
    data: dict[str, Any] = {"addon": "core_mosquitto", "host": host, "port": port, "ssl": False, "protocol": "3.1.1"}
    if username is not None:
        data["username"] = username
    if password is not None:
        data["password"] = password
    return {"result": "ok", "data": data}


Request = tuple[str, str | None, int]  # path, Authorization header, status answered


def make_app(token: str, answer: Any, requests: list[Request]) -> web.Application:
    async def services_mqtt(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization")
        status = 401 if not header else 403 if header != f"Bearer {token}" else 200
        requests.append((request.path, header, status))
        if status == 401:
            raise web.HTTPUnauthorized()
        if status == 403:
            raise web.HTTPForbidden()
        return web.json_response(answer)

    async def anything_else(request: web.Request) -> web.Response:
        requests.append((request.path, request.headers.get("Authorization"), 404))
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_get(MQTT_PATH, services_mqtt)
    app.router.add_route("*", "/{tail:.*}", anything_else)
    return app


class SupervisorStandin:
    """The stand-in on 127.0.0.1, served from a thread with its own event loop."""

    def __init__(self, token: str, answer: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token, self.answer, self.host, self.port = token, answer, host, port
        self.requests: list[Request] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, as FACELOCK_SUPERVISOR_URL takes it (the Supervisor's is http://supervisor)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        ready = threading.Event()
        failure: list[OSError] = []

        def serve() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._open())
            except OSError as exc:  # the port is taken, say: reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="supervisor-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Supervisor stand-in did not start")
        if failure:
            raise failure[0]
        return self

    async def _open(self) -> None:
        self._runner = web.AppRunner(make_app(self.token, self.answer, self.requests), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the free port the OS chose for port 0

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port (printed at start)")
    parser.add_argument("--token", required=True, help="the add-on's SUPERVISOR_TOKEN")
    parser.add_argument("--answer-json", type=Path, required=True, help="the services/mqtt answer, as JSON")
    args = parser.parse_args(argv)
    answer = json.loads(args.answer_json.read_text())
    standin = SupervisorStandin(args.token, answer, args.host, args.port).start()
    print(f"supervisor stand-in listening on {standin.url}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    seen = 0
    while not done.wait(0.1):
        for path, header, status in standin.requests[seen:]:
            scheme = header.split()[0] if header else "no Authorization header"  # never the token itself
            print(f"supervisor stand-in: {path} ({scheme}) -> {status}", flush=True)
        seen = len(standin.requests)
    standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
