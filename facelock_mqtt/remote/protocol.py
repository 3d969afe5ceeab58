"""The remote-verification messages: canonical JSON, signed with HMAC-SHA256, never replayable.

Every message is one JSON object `{"kind", "correlation", "ts", "body", "sig"}`. `sig` is the
HMAC-SHA256 (key: `verify.secret`) of the canonical JSON (sorted keys, no spaces) of the other
four, so the body, the correlation id and the timestamp are all covered: a broker client without
the secret can neither forge a message nor move a genuine one to another attempt. A receiver
refuses a message whose kind is not the one expected, whose timestamp is older than
`max_age_s` (or that far in the future), or whose correlation id it has seen already
(`ReplayGuard`). Images travel as lossless PNG in base64, so a worker scores exactly the pixels
the door cut out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict

import cv2
import numpy as np

from ..errors import FaceLockError

REQUEST, ANSWER, GALLERY = "verify-request", "verify-answer", "gallery"
FORMAT = 1
MAX_CROPS = 50  # an attempt looks at no more than decision.n (<= 50) frames
CROP_SHAPE = (112, 112, 3)
PATCH_SHAPE = (80, 80, 3)


class RemoteFailure(FaceLockError):
    """Remote verification did not give a trustworthy answer; the door denies with this reason."""


class NoAnswer(RemoteFailure):
    """No worker answered before the deadline (in `auto` mode the door may verify locally)."""


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _mac(secret: bytes, kind: str, correlation: str, ts: float, body: dict) -> str:
    signed = canonical({"kind": kind, "correlation": correlation, "ts": ts, "body": body})
    return hmac.new(secret, signed, hashlib.sha256).hexdigest()


def seal(secret: bytes, kind: str, correlation: str, body: dict, ts: float | None = None) -> bytes:
    """The signed message for `body`."""
    ts = time.time() if ts is None else ts
    return canonical(
        {
            "kind": kind,
            "correlation": correlation,
            "ts": ts,
            "body": body,
            "sig": _mac(secret, kind, correlation, ts, body),
        }
    )


def unseal(secret: bytes, payload: bytes, kind: str, max_age_s: float, now: float | None = None) -> tuple[str, dict]:
    """(correlation id, body) of a genuine, fresh message of `kind`; RemoteFailure otherwise."""
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteFailure("unreadable message (not JSON)") from exc
    if not isinstance(message, dict) or set(message) != {"kind", "correlation", "ts", "body", "sig"}:
        raise RemoteFailure("malformed message")
    kind_in, correlation, ts, body, sig = (message[k] for k in ("kind", "correlation", "ts", "body", "sig"))
    if not (
        isinstance(correlation, str) and isinstance(ts, int | float) and isinstance(body, dict) and isinstance(sig, str)
    ):
        raise RemoteFailure("malformed message")
    if not hmac.compare_digest(sig, _mac(secret, str(kind_in), correlation, ts, body)):
        raise RemoteFailure("bad signature (forged, or another verify.secret)")
    if kind_in != kind:
        raise RemoteFailure(f"a {kind_in!r} message where a {kind!r} was expected")
    now = time.time() if now is None else now
    if not abs(now - ts) <= max_age_s:  # NaN is refused too
        raise RemoteFailure(f"stale message ({now - ts:.1f} s old, at most {max_age_s:g} s accepted)")
    return correlation, body


class ReplayGuard:
    """Correlation ids seen within the replay window: a second copy of a message is refused.
    Older ids may be forgotten, as `unseal` refuses their messages as stale anyway."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, correlation: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - 2 * self.max_age_s:
                self._seen.popitem(last=False)
            if correlation in self._seen:
                raise RemoteFailure(f"replayed message (correlation id {correlation[:8]}… seen before)")
            self._seen[correlation] = now


def encode_image(image: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise RemoteFailure("cannot encode a crop")
    return base64.b64encode(png.tobytes()).decode()


def decode_image(text: object, shape: tuple[int, int, int]) -> np.ndarray:
    """A crop of exactly `shape` (uint8 BGR), or RemoteFailure."""
    try:
        data = np.frombuffer(base64.b64decode(str(text), validate=True), np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except (ValueError, cv2.error) as exc:
        raise RemoteFailure("undecodable crop") from exc
    if image is None or image.shape != shape:
        raise RemoteFailure(f"a crop of shape {None if image is None else image.shape}, {shape} expected")
    return image


def encode_templates(templates: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(templates, dtype="<f4").tobytes()).decode()


def decode_templates(text: str, rows: int, dim: int) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")
    if data.size != rows * dim:
        raise RemoteFailure(f"gallery holds {data.size} values, {rows}x{dim} announced")
    return data.reshape(rows, dim).astype(np.float32)


def gallery_digest(fingerprint: str, people: list[str], templates: np.ndarray) -> str:
    """The gallery's version: SHA-256 of the bundle fingerprint, the names and the template bytes."""
    digest = hashlib.sha256(canonical({"fingerprint": fingerprint, "people": list(people)}))
    digest.update(np.ascontiguousarray(templates, dtype="<f4").tobytes())
    return digest.hexdigest()


def gallery_body(fingerprint: str, people: list[str], templates: np.ndarray) -> dict:
    templates = (
        np.asarray(templates, np.float32).reshape(len(people), -1) if len(people) else np.zeros((0, 0), np.float32)
    )
    return {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "digest": gallery_digest(fingerprint, people, templates),
        "people": list(people),
        "dim": int(templates.shape[1]),
        "templates": encode_templates(templates),
    }


def read_gallery(body: dict) -> tuple[str, str, list[str], np.ndarray]:
    """(fingerprint, digest, people, templates) of a gallery message, its digest checked."""
    try:
        fingerprint, people, dim = str(body["fingerprint"]), [str(p) for p in body["people"]], int(body["dim"])
        templates = decode_templates(body["templates"], len(people), dim)
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteFailure(f"malformed gallery message: {exc}") from exc
    digest = gallery_digest(fingerprint, people, templates)
    if body.get("digest") != digest:
        raise RemoteFailure("gallery digest does not match its contents")
    return fingerprint, digest, people, templates
