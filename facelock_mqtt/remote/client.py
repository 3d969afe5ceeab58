"""The door's side of remote verification: one signed request, one signed answer, or a failure.

A request goes to `<base>/verify` (workers read it through `$share/<group>/<base>/verify`, so
each request reaches one worker), QoS 1, with this client's response topic, a fresh random
correlation id (also inside the signed message) and a message expiry of the deadline: a request
nobody took in time is dropped by the broker rather than answered late. The answer must come
back signed, fresh, for a correlation id this client is waiting for, and only once; anything
else is ignored and counted, so a forged or replayed answer can at most fail to arrive (the
door then denies at the deadline), never unlock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import Counter

import numpy as np
import paho.mqtt.client as paho

from ..errors import ConfigError
from ..settings import MqttSettings, VerifySettings
from .link import Link, correlation_of
from .protocol import ANSWER, GALLERY, REQUEST, NoAnswer, RemoteFailure, ReplayGuard, gallery_body, seal, unseal

log = logging.getLogger(__name__)

GALLERY_ACK_S = 5.0


def topics(base: str, client_id: str = "") -> dict[str, str]:
    """The remote-verification topic grammar, in one place."""
    return {
        "request": f"{base}/verify",
        "gallery": f"{base}/verify/gallery",
        "answers": f"{base}/verify/answer/",  # + client id: each door client has its own
        "answer": f"{base}/verify/answer/{client_id}",
    }


class _Waiter:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.body: dict | None = None


class RemoteVerifier:
    def __init__(self, mqtt: MqttSettings, verify: VerifySettings, client_id: str) -> None:
        if verify.secret is None:
            raise ConfigError("verify.secret: remote verification needs a secret to sign its messages")
        self.secret = verify.secret.get_secret_value().encode()
        self.verify_settings = verify
        self.topics = topics(mqtt.base_topic, client_id)
        self.stats: Counter[str] = Counter()
        self._waiting: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._replay = ReplayGuard(verify.max_age_s)
        self._gallery: str | None = None  # digest of the gallery last published
        self.link = Link(mqtt, client_id, {self.topics["answer"]: self._on_answer}, on_connected=self._forget_gallery)

    def start(self, timeout: float = 10.0, required: bool = True) -> None:
        self.link.start(timeout, required)

    def _forget_gallery(self) -> None:
        # After a reconnect the broker may have restarted and lost the retained gallery: the
        # next request publishes it again, before the request itself.
        self._gallery = None

    def stop(self) -> None:
        self.link.stop()

    def publish_gallery(self, fingerprint: str, people: list[str], templates: np.ndarray) -> str:
        """Publish the gallery (retained, signed) when it changed; returns its digest."""
        body = gallery_body(fingerprint, people, templates)
        if body["digest"] != self._gallery:
            if not self.link.connected.is_set():
                raise NoAnswer(f"no worker answered: the broker {self.link.address} is not connected")
            payload = seal(self.secret, GALLERY, body["digest"], body)
            info = self.link.publish(self.topics["gallery"], payload, retain=True)
            try:
                info.wait_for_publish(GALLERY_ACK_S)  # the broker holds it before a request needs it
            except (RuntimeError, ValueError) as exc:  # disconnected meanwhile
                raise NoAnswer(f"no worker answered: the gallery could not be published ({exc})") from exc
            if not info.is_published():
                raise NoAnswer(f"no worker answered: the broker did not take the gallery within {GALLERY_ACK_S:g} s")
            self._gallery = body["digest"]
            log.info("remote verification: gallery %s… published (%d templates)", body["digest"][:12], len(people))
        return body["digest"]

    def verify(self, body: dict) -> dict:
        """The answer body for a request body, or RemoteFailure (NoAnswer when none came in time)."""
        deadline_s = self.verify_settings.deadline_s
        if not self.link.connected.is_set():
            raise NoAnswer(f"no worker answered: the broker {self.link.address} is not connected")
        correlation = secrets.token_hex(16)
        waiter = _Waiter()
        with self._lock:
            self._waiting[correlation] = waiter
        try:
            payload = seal(self.secret, REQUEST, correlation, body)
            self.link.publish(
                self.topics["request"], payload, expiry_s=deadline_s,
                response_topic=self.topics["answer"], correlation=correlation,
            )  # fmt: skip
            if not waiter.done.wait(deadline_s):
                self.stats["no_answer"] += 1
                raise NoAnswer(f"no worker answered within {deadline_s:g} s")
        finally:
            with self._lock:
                self._waiting.pop(correlation, None)
        answer = waiter.body
        if not answer.get("ok"):
            self.stats["worker_error"] += 1
            raise RemoteFailure(f"worker {answer.get('worker')!s}: {answer.get('error')!s}")
        return answer

    def _on_answer(self, message: paho.MQTTMessage) -> None:
        received = time.monotonic()
        try:
            correlation, body = unseal(self.secret, message.payload, ANSWER, self.verify_settings.max_age_s)
            if correlation_of(message) != correlation:
                raise RemoteFailure("correlation data differs from the signed correlation id")
            with self._lock:
                waiter = self._waiting.get(correlation)
            if waiter is None:
                raise RemoteFailure(f"answer for no pending request (correlation id {correlation[:8]}…)")
            self._replay.check(correlation, received)
        except RemoteFailure as exc:
            self.stats["refused"] += 1
            log.warning("remote verification: answer refused: %s", exc)
            return
        waiter.body = body
        waiter.done.set()
