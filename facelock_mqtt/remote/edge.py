"""What a door in remote mode does itself, what it sends, and how it reads the answer.

Per frame the door locates the face (detect -> align -> quality, no embedding). Usable frames
are held back until they can decide the attempt -- k matches still missing, and (with liveness)
the evidence of life `LivenessModel.wants_more_frames` waits for -- and then go out in ONE
request: each frame's aligned 112x112 crop and its two 80x80 liveness patches. The answer
gives each crop's cosine score against every template of the gallery version the request
named, and each crop's live probability per MiniFASNet model. The door judges the scores with
its own `Matcher` (threshold, margin), feeds them to its own `Attempt` (k of n) and fuses the
liveness itself (`RemoteLiveness`): a worker never decides anything. An answer that does not
fit the request exactly is a RemoteFailure.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Sequence

import numpy as np

from ..errors import ImageError
from ..guards.liveness import MODELS, LivenessModel, OperatingPoint, crop_face
from ..pipeline.decide import Attempt
from ..pipeline.engine import FaceEngine, FaceResult
from ..pipeline.match import Identification, Matcher
from .client import RemoteVerifier
from .protocol import MAX_CROPS, NoAnswer, RemoteFailure, encode_image

log = logging.getLogger(__name__)

KEPT_SCORES = 64  # liveness scores of recent frames; a frame without one is judged a spoof

Pending = tuple[np.ndarray, FaceResult, float]  # (frame image, located face, decision clock)


class RemoteLiveness(LivenessModel):
    """The door's liveness guard when the CNN runs on the workers: the same fusion, motion cue
    and operating point as `LivenessModel`, with each frame's CNN score taken from the answer.
    A frame the workers did not score uses `local` models when there are some (auto mode), and
    otherwise cannot be judged, which `assess` turns into a spoof."""

    def __init__(self, point: OperatingPoint, local: LivenessModel | None = None) -> None:
        super().__init__(local.sessions if local is not None else [], point)
        self._scores: OrderedDict[int, tuple[np.ndarray, float]] = OrderedDict()

    @property
    def status(self) -> str:
        local = " (local models when no worker answers)" if self.sessions else ""
        return f"on: MiniFASNet on the remote workers{local}, threshold {self.point.threshold:.3f}"

    def record(self, image: np.ndarray, score: float) -> None:
        # Keyed by the frame's identity, and the frame kept with it so that its id is never reused.
        self._scores[id(image)] = (image, score)
        while len(self._scores) > KEPT_SCORES:
            self._scores.popitem(last=False)

    def cnn_score(self, image: np.ndarray, box: np.ndarray) -> float:
        kept = self._scores.get(id(image))
        if kept is not None and kept[0] is image:
            return kept[1]
        if self.sessions:
            return super().cnn_score(image, box)
        raise ImageError("no liveness score from a worker for this frame")


class EdgeVerifier:
    """The door's remote verification: shared by every door of a service (thread-safe)."""

    def __init__(self, client: RemoteVerifier, engine: FaceEngine, fingerprint: str, auto: bool) -> None:
        self.client = client
        self.engine = engine
        self.fingerprint = fingerprint
        self.auto = auto  # no answer in time: verify locally instead of denying

    def publish_gallery(self, matcher: Matcher) -> str:
        return self.client.publish_gallery(self.fingerprint, [str(p) for p in matcher.people], matcher.templates)

    @staticmethod
    def due(attempt: Attempt, pending: Sequence[Pending], frames: Sequence, liveness: LivenessModel | None) -> bool:
        """Can the held-back frames decide the attempt now? Then they go out in one request."""
        if not pending:
            return False
        usable = [o for o in attempt.observations if o.usable]
        if len(usable) + len(pending) >= min(attempt.settings.n, MAX_CROPS):
            return True  # the attempt looks at no more frames
        votes = Counter(o.person for o in usable if o.person is not None)
        if len(pending) < max(1, attempt.settings.k - max(votes.values(), default=0)):
            return False
        return liveness is None or not liveness.wants_more_frames(frames)

    def identify(
        self, door: str, pending: Sequence[Pending], matcher: Matcher, liveness: RemoteLiveness | None
    ) -> list[Identification]:
        """One Identification per pending frame, from one request; RemoteFailure when the
        answer is missing or does not fit (in auto mode, no answer verifies locally)."""
        digest = self.publish_gallery(matcher)
        body = {
            "door": door,
            "bundle": self.fingerprint,
            "gallery": digest,
            "crops": [encode_image(result.crop) for _, result, _ in pending],
            "liveness": None if liveness is None else [_patches(image, result) for image, result, _ in pending],
        }
        try:
            answer = self.client.verify(body)
        except NoAnswer as exc:
            if not self.auto:
                raise
            log.warning("door %s: %s; verifying locally (verify.mode: auto)", door, exc)
            return self._local(pending, matcher)
        return self._read(answer, digest, pending, matcher, liveness)

    def _read(
        self, answer: dict, digest: str, pending: Sequence[Pending], matcher: Matcher, liveness: RemoteLiveness | None
    ) -> list[Identification]:
        if answer.get("bundle") != self.fingerprint or answer.get("gallery") != digest:
            raise RemoteFailure("the worker answered for another gallery or bundle version")
        scores = answer.get("scores")
        if not isinstance(scores, list) or len(scores) != len(pending):
            raise RemoteFailure("the answer's scores do not fit the request")
        identifications = []
        for (image, result, _), row in zip(pending, scores, strict=True):
            probe = _scores(row, len(matcher.people))
            identifications.append(Identification(result, matcher.match_scores(probe, result.quality)))
        if liveness is not None:
            for (image, _, _), live in zip(pending, _liveness_rows(answer, len(pending)), strict=True):
                if live is not None:
                    liveness.record(image, live)
        return identifications

    def _local(self, pending: Sequence[Pending], matcher: Matcher) -> list[Identification]:
        embeddings = self.engine.embed_aligned([result.crop for _, result, _ in pending])
        return [
            Identification(dataclasses.replace(result, embedding=e), matcher.match(e, result.quality))
            for (_, result, _), e in zip(pending, embeddings, strict=True)
        ]


def _patches(image: np.ndarray, result: FaceResult) -> list[str] | None:
    """The frame's liveness patches, one per model scale; None when the box cannot be cropped
    (the worker then scores nothing and the door judges the frame a spoof)."""
    try:
        return [encode_image(crop_face(image, result.face.box, spec.scale)) for spec in MODELS]
    except ImageError:
        return None


def _scores(row: object, templates: int) -> np.ndarray:
    if not isinstance(row, list) or len(row) != templates:
        raise RemoteFailure(
            f"the answer scores {len(row) if isinstance(row, list) else '?'} templates, {templates} expected"
        )
    if not all(isinstance(v, int | float) and math.isfinite(v) and -1.001 <= v <= 1.001 for v in row):
        raise RemoteFailure("the answer holds a score that is not a cosine")
    return np.asarray(row, np.float32)


def _liveness_rows(answer: dict, count: int) -> list[float | None]:
    """Each crop's mean live probability over the models; None where the worker scored none."""
    rows = answer.get("liveness")
    if not isinstance(rows, list) or len(rows) != count:
        raise RemoteFailure("the worker sent no liveness scores (are its liveness models installed?)")
    means = []
    for row in rows:
        if row is None:
            means.append(None)
            continue
        if not (isinstance(row, list) and len(row) == len(MODELS)) or not all(
            isinstance(v, int | float) and 0.0 <= v <= 1.0 for v in row
        ):
            raise RemoteFailure("the answer holds a liveness score that is not a probability")
        means.append(float(np.mean(row)))
    return means
