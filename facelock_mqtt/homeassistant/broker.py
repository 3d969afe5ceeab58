"""The embedded MQTT broker: a maintained broker started for FaceLock when none is configured.

Mosquitto runs as a child process when it is installed; otherwise amqtt (an asyncio broker that
FaceLock depends on) runs in a thread of this process. Either listens on 127.0.0.1 only and lets
anonymous clients in, so it never faces a network, and stops with the service. The add-on never
starts one: the Supervisor hands out Home Assistant's broker.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path
from typing import Literal

from ..errors import ConfigError
from ..settings import MqttSettings

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
Kind = Literal["mosquitto", "amqtt"]

# `user`: as root, mosquitto would switch to its own user, and a change of user clears the
# parent-death signal that ends it with FaceLock; it needs no rights beyond FaceLock's anyway.
MOSQUITTO_CONF = """\
listener {port} {host}
user {user}
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
log_timestamp false
"""


class EmbeddedBroker(ABC):
    """A broker on `host:port` that this process starts and stops."""

    kind: Kind
    mqtt5: bool  # whether it speaks MQTT 5; clients of one that does not must connect in 3.1.1

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def start(self) -> None:
        """Return once the broker accepts connections; raise ConfigError when it cannot listen."""
        if not port_is_free(self.host, self.port):
            raise ConfigError(f"mqtt.port: {self.host}:{self.port} is taken; the embedded broker cannot listen there")
        self._start()

    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None:
        """End every connection and free the port; a second call does nothing."""

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MosquittoBroker(EmbeddedBroker):
    """The `mosquitto` binary as a child process, running as FaceLock's user."""

    kind: Kind = "mosquitto"
    mqtt5 = True

    def __init__(self, host: str, port: int, binary: str) -> None:
        super().__init__(host, port)
        self.binary = binary
        self.process: subprocess.Popen[str] | None = None
        self._watcher: threading.Thread | None = None
        self._last_words: deque[str] = deque(maxlen=5)
        self._listening = False

    def _start(self) -> None:
        # The configuration lives until mosquitto listens (it has read it by then), so nothing is
        # left behind even when FaceLock is killed.
        with tempfile.TemporaryDirectory(prefix="facelock-mosquitto-") as folder:
            conf = Path(folder) / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(host=self.host, port=self.port, user=pwd.getpwuid(os.getuid()).pw_name))
            self.process = subprocess.Popen(
                [*_die_with_this_process(), self.binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                # Its own session: a Ctrl-C or SIGTERM to FaceLock's process group must not end the
                # broker before FaceLock has published `offline` and locked every door.
                start_new_session=True,
            )  # fmt: skip
            self._watcher = threading.Thread(target=self._watch, args=(self.process,), name="mqtt-broker", daemon=True)
            self._watcher.start()
            atexit.register(self.stop)
            try:
                self._wait_listening(self.process, self._watcher)
            except ConfigError:
                self.stop()
                raise
        self._listening = True

    def _wait_listening(self, process: subprocess.Popen[str], watcher: threading.Thread) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                watcher.join(1)  # then it has read mosquitto's last words
                reason = " | ".join(self._last_words) or f"exit code {process.returncode}"
                raise ConfigError(f"mqtt.port: mosquitto cannot listen on {self.host}:{self.port}: {reason}")
            try:
                # start() saw the port free a moment ago, so whoever answers now is our child.
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise ConfigError(f"mqtt.port: mosquitto did not listen on {self.host}:{self.port} within {START_TIMEOUT_S} s")

    def _watch(self, process: subprocess.Popen[str]) -> None:
        """Pass mosquitto's errors and warnings on; say so loudly if it dies under the service."""
        assert process.stderr is not None
        for line in process.stderr:
            self._last_words.append(line.strip())
            if self._listening:
                log.warning("embedded broker (mosquitto): %s", line.strip())
        code = process.wait()
        if self._listening:
            log.error(
                "the embedded MQTT broker (mosquitto, pid %d) exited with code %d: Home Assistant and FaceLock "
                "cannot talk until FaceLock is restarted", process.pid, code,
            )  # fmt: skip

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self.process = self.process, None
        self._listening = False  # from here on, its exit is expected
        if process is not None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("embedded broker (mosquitto) ignored SIGTERM; killing it")
                process.kill()
                process.wait()
        if self._watcher is not None:
            self._watcher.join(STOP_TIMEOUT_S)
        if process is not None and process.stderr is not None:
            process.stderr.close()
        self._watcher = None


def _die_with_this_process() -> list[str]:
    """`setpriv --pdeathsig` has the kernel end mosquitto when FaceLock dies, even by SIGKILL.

    The signal follows the thread that started the child, so start the broker from a thread that
    lives as long as the service (the main thread does). Without setpriv, stop() and atexit do it.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class AmqttBroker(EmbeddedBroker):
    """amqtt in its own thread and event loop, for machines without Mosquitto."""

    kind: Kind = "amqtt"
    mqtt5 = False  # amqtt 0.12 speaks 3.1.1 only, and never answers a version 5 CONNECT that carries a will

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def _start(self) -> None:
        # amqtt logs every connection and state change at INFO; FaceLock's log is for the door.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        ready = threading.Event()
        failure: list[Exception] = []
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve(ready, failure)), name="mqtt-broker", daemon=True
        )  # fmt: skip
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise ConfigError(f"mqtt.port: amqtt cannot listen on {self.host}:{self.port}: {failure[0]}") from failure[0]
        self._thread = thread

    async def _serve(self, ready: threading.Event, failure: list[Exception]) -> None:
        """Run the broker until stop(); asyncio.run then cancels whatever amqtt left running."""
        from amqtt.broker import Broker  # here: a machine with Mosquitto never pays its ~0.1 s of imports

        try:
            broker = Broker({
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            })  # fmt: skip
            await broker.start()
        except Exception as exc:  # handed to start(), which raises it as a ConfigError
            failure.append(exc)
            ready.set()
            return
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        ready.set()
        await self._stop.wait()
        await broker.shutdown()

    def stop(self) -> None:
        loop, thread, stop = self._loop, self._thread, self._stop
        self._loop = self._thread = self._stop = None
        if loop is None or thread is None or stop is None:
            return
        loop.call_soon_threadsafe(stop.set)
        thread.join(STOP_TIMEOUT_S)


def mosquitto_binary() -> str | None:
    """The installed `mosquitto`; Debian puts it in /usr/sbin, often not on a user's PATH."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def new_broker(port: int, kind: Kind | None = None, host: str = HOST) -> EmbeddedBroker:
    """Mosquitto when it is installed, otherwise amqtt; `kind` picks one (tests use both)."""
    binary = mosquitto_binary()
    if kind == "amqtt" or (kind is None and binary is None):
        return AmqttBroker(host, port)
    if binary is None:
        raise ConfigError("mqtt.host: the mosquitto broker is not installed (apt-get install mosquitto)")
    return MosquittoBroker(host, port, binary)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as brokers bind: TIME_WAIT is not "taken"
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def embedded_broker_for(
    settings: MqttSettings, kind: Kind | None = None
) -> tuple[MqttSettings, EmbeddedBroker | None]:
    """When `mqtt.host` is empty, start an embedded broker on localhost and point settings at it.

    The configured port is tried first; when it is taken (often by a broker already running on
    the machine), a free port is used and logged, so the service still starts.
    """
    if settings.host is not None:
        return settings, None
    port = settings.port
    if not port_is_free(HOST, port):
        port = free_port()
        log.warning("mqtt.port %d is taken on %s (another MQTT broker?): the embedded broker uses port %d",
                    settings.port, HOST, port)  # fmt: skip
    broker = new_broker(port, kind)
    started = time.monotonic()
    broker.start()
    log.info("no MQTT broker configured: embedded %s broker on %s:%d (started in %.0f ms)",
             broker.kind, HOST, port, 1000 * (time.monotonic() - started))  # fmt: skip
    # amqtt speaks 3.1.1 only and leaves an MQTT 5 CONNECT unanswered: say so up front.
    update = {"host": HOST, "port": port, "tls": False, "mqtt5": settings.mqtt5 and broker.mqtt5}
    return settings.model_copy(update=update), broker
