"""`facelock worker`: embeds and scores the crops doors send, on any machine with the models.

A worker loads the bundle (SFace) and, when installed, the liveness models; it holds no gallery
of its own but the one the service publishes, retained and signed, on `<base>/verify/gallery`
(a worker of another bundle refuses it). It joins `$share/<group>/<base>/verify` with a receive
maximum of 1, so the broker hands each request to one worker of the group that is not busy.
Per request it checks the signature, the age and that the correlation id is new, that the
request names the bundle and the gallery digest it holds (otherwise it answers an error: the
door denies), and answers on the request's response topic -- only under `<base>/verify/answer/`,
so a worker can never be made to publish to a lock's topics -- with the signed scores.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho

from ..errors import FaceLockError
from ..guards.liveness import LIVE_CLASS, MODELS, LivenessModel, load_liveness, softmax
from ..models.bundle import load_bundle
from ..models.default_bundle import default_bundle
from ..pipeline.embed import Embedder
from ..settings import Settings
from .client import topics
from .link import Link, correlation_of, response_topic_of
from .protocol import (
    ANSWER,
    CROP_SHAPE,
    GALLERY,
    MAX_CROPS,
    PATCH_SHAPE,
    REQUEST,
    RemoteFailure,
    ReplayGuard,
    decode_image,
    read_gallery,
    seal,
    unseal,
)  # fmt: skip

log = logging.getLogger(__name__)

RETAINED_MAX_AGE_S = float("inf")  # a retained gallery is old by nature; its digest versions it


class Worker:
    def __init__(self, settings: Settings, worker_id: str) -> None:
        if settings.verify.secret is None:
            raise FaceLockError(
                "verify.secret: a worker needs the secret the doors sign with (FACELOCK_VERIFY__SECRET)"
            )
        self.id = worker_id
        self.secret = settings.verify.secret.get_secret_value().encode()
        self.max_age_s = settings.verify.max_age_s
        bundle = (
            load_bundle(settings.model.bundle) if settings.model.bundle else default_bundle(Path(settings.data_dir))
        )
        self.fingerprint = bundle.manifest.fingerprint
        self.embedder = Embedder(bundle, settings.model.threads)
        self.liveness: LivenessModel | None = load_liveness(
            settings.liveness.models or Path(settings.data_dir) / "liveness", settings.model.threads
        )
        self.topics = topics(settings.mqtt.base_topic)
        self.gallery: tuple[str, list[str], np.ndarray] | None = None  # (digest, people, templates)
        self.answered = 0
        self._replay = ReplayGuard(self.max_age_s)
        self._lock = threading.Lock()
        share = f"$share/{settings.verify.group}/{self.topics['request']}"
        self.link = Link(
            settings.mqtt,
            worker_id,
            {self.topics["gallery"]: self._on_gallery, share: self._on_request},
            receive_maximum=1,
        )

    def start(self, timeout: float = 10.0) -> None:
        self.link.start(timeout)
        log.info("worker %s: serving %s (bundle %s, liveness %s)", self.id, self.topics["request"],
                 self.fingerprint[:12], "on" if self.liveness is not None else "off")  # fmt: skip

    def stop(self) -> None:
        self.link.stop()

    def _on_gallery(self, message: paho.MQTTMessage) -> None:
        try:
            _, body = unseal(self.secret, message.payload, GALLERY, RETAINED_MAX_AGE_S)
            fingerprint, digest, people, templates = read_gallery(body)
        except RemoteFailure as exc:
            log.warning("worker %s: gallery refused: %s", self.id, exc)
            return
        if fingerprint != self.fingerprint:
            log.error("worker %s: the gallery is for bundle %s…, this worker serves %s…: it answers no request",
                      self.id, fingerprint[:12], self.fingerprint[:12])  # fmt: skip
            with self._lock:
                self.gallery = None
            return
        with self._lock:
            self.gallery = (digest, people, templates)
        log.info("worker %s: gallery %s… (%d templates)", self.id, digest[:12], len(people))

    def _on_request(self, message: paho.MQTTMessage) -> None:
        reply_to = response_topic_of(message)
        try:
            correlation, body = unseal(self.secret, message.payload, REQUEST, self.max_age_s)
            self._replay.check(correlation)
        except RemoteFailure as exc:
            log.warning("worker %s: request refused, not answered: %s", self.id, exc)
            return  # nothing to tell a forger
        if (
            reply_to is None
            or not reply_to.startswith(self.topics["answers"])
            or correlation_of(message) != correlation
        ):
            log.warning("worker %s: request without a valid response topic or correlation data: not answered", self.id)
            return
        try:
            answer = {"ok": True, **self.answer(body)}
        except RemoteFailure as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # the door must hear of it at once rather than wait for its deadline
            log.exception("worker %s: error scoring a request", self.id)
            answer = {"ok": False, "error": f"worker error: {type(exc).__name__}"}
        answer["worker"] = self.id
        self.link.publish(reply_to, seal(self.secret, ANSWER, correlation, answer), correlation=correlation)
        self.answered += 1

    def answer(self, body: dict) -> dict:
        """Scores of a request's crops against every template, and their liveness scores."""
        with self._lock:
            gallery = self.gallery
        if body.get("bundle") != self.fingerprint:
            raise RemoteFailure(f"bundle version mismatch (worker serves {self.fingerprint[:12]}…)")
        if gallery is None or body.get("gallery") != gallery[0]:
            held = "none" if gallery is None else gallery[0][:12] + "…"
            raise RemoteFailure(f"gallery version mismatch (worker holds {held})")
        crops = body.get("crops")
        if not isinstance(crops, list) or not 0 < len(crops) <= MAX_CROPS:
            raise RemoteFailure("a request carries 1 to 50 crops")
        embeddings = self.embedder.embed([decode_image(c, CROP_SHAPE) for c in crops])
        templates = gallery[2]
        scores = (embeddings @ templates.T) if len(templates) else np.zeros((len(crops), 0), np.float32)
        return {
            "bundle": self.fingerprint,
            "gallery": gallery[0],
            "scores": [[float(v) for v in row] for row in scores],
            "liveness": self._liveness(body.get("liveness"), len(crops)),
        }

    def _liveness(self, patches: object, count: int) -> list[list[float] | None] | None:
        if patches is None or self.liveness is None:
            return None  # the door, wanting liveness, denies an answer without it
        if not isinstance(patches, list) or len(patches) != count:
            raise RemoteFailure("the liveness patches do not fit the crops")
        return [None if frame is None else self._cnn(frame) for frame in patches]

    def _cnn(self, frame: object) -> list[float]:
        if not isinstance(frame, list) or len(frame) != len(MODELS):
            raise RemoteFailure(f"a frame needs {len(MODELS)} liveness patches")
        scores = []
        for (spec, session), text in zip(self.liveness.sessions, frame, strict=True):
            patch = decode_image(text, PATCH_SHAPE)  # cut by the door at spec.scale (guards/liveness.crop_face)
            blob = patch.transpose(2, 0, 1)[None].astype(np.float32)  # raw 0-255 BGR, as the weights expect
            scores.append(float(softmax(session.run(None, {"input": blob})[0])[0, LIVE_CLASS]))
        return scores
