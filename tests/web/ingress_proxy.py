"""A stand-in for Home Assistant's ingress proxy: serves the panel under
/api/hassio_ingress/<token>/ and forwards to it with the headers the Supervisor sets. Anything
outside the prefix is a 404, so a link or asset that forgets the base path fails the browser test."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


class IngressProxy:
    def __init__(self, target: str, prefix: str, user: dict[str, str], port: int) -> None:
        self.target, self.prefix, self.user, self.port = target.rstrip("/"), prefix, user, port
        self.misses: list[str] = []  # paths requested outside the prefix
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}/"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if not request.path.startswith(self.prefix + "/"):
            self.misses.append(request.path)
            raise web.HTTPNotFound()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers.update({"X-Ingress-Path": self.prefix, **self.user})
        path = request.path_qs[len(self.prefix) :]
        async with self._session.request(
            request.method, self.target + path, headers=headers, data=await request.read(), allow_redirects=False
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():  # streams the MJPEG live view too
                await response.write(chunk)
            return response

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._forward)
            self._runner = web.AppRunner(app, shutdown_timeout=1.0)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
