"""Test helpers: a real paho subscriber that records what it receives, and the one test double
the project allows: a fake door relay."""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` until it is true; fail the test with `what` when it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Collector:
    """A paho client subscribed to `topics` (again after every reconnect), recording messages."""

    def __init__(
        self,
        host: str,
        port: int,
        topics: Iterable[str] = ("#",),
        client_id: str | None = None,
        clean_session: bool = True,
        tls: ssl.SSLContext | None = None,
        auth: tuple[str, str] | None = None,
        qos: int = 1,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._topics = list(topics)
        self._qos = qos
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
            clean_session=clean_session,
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError(f"collector could not connect and subscribe on {host}:{port}")

    def _on_connect(self, client: paho.Client, *args: object) -> None:
        if self._topics:
            client.subscribe([(topic, self._qos) for topic in self._topics])
        else:
            self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(message.topic, message.payload, message.qos, bool(message.retain)))

    def on(self, topic: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[bytes]:
        return [m.payload for m in self.on(topic)]

    def wait_for(
        self, topic: str, payload: bytes | None = None, count: int = 1, timeout: float = 10.0
    ) -> list[Received]:
        def found() -> list[Received]:
            return [m for m in self.on(topic) if payload is None or m.payload == payload]

        wait_until(lambda: len(found()) >= count, timeout, f"{count} x {payload!r} on {topic}")
        return found()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- the door's hardware, and Home Assistant's rendering of a lock command ----------------------------


class FakeRelay:
    """The one mock allowed: the door's hardware. Records calls; may be told to fail."""

    def __init__(self, fail_unlock: bool = False, fail_lock: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_unlock, self.fail_lock = fail_unlock, fail_lock

    def unlock(self) -> None:
        self.calls.append("unlock")
        if self.fail_unlock:
            raise OSError("relay board not answering")

    def lock(self) -> None:
        self.calls.append("lock")
        if self.fail_lock:
            raise OSError("relay board not answering")


def render(template: str, value: str, code: str | None) -> bytes:
    """Home Assistant's rendering of the lock command template (Jinja, these two variables)."""
    return template.replace("{{ value }}", value).replace("{{ code }}", str(code)).encode()
