"""Camera-source sanity: spot a frozen or looping stream, on which the door must not unlock.

Each frame is reduced to a fingerprint: a 16x16 grayscale thumbnail (area mean, kept as float so
that sensor noise survives it). Distances are mean absolute fingerprint differences, in grey levels.

A real camera never shows the same frame twice: sensor noise makes every frame new. Measured on
../shared/data/nuaa (tests/test_streamcheck.py measures and prints it again): a still real scene
with synthetic sensor noise at the lowest level estimated in NUAA live frames (sigma 0.5 grey
level) differs by >= 0.013 from frame to frame, consecutive NUAA live frames by >= 0.55, while a
frozen stream or a replayed clip decoded from the same data repeats its frames exactly (0.0).
FROZEN_BOUND = 0.004 sits three times under that noise floor. So:

- a frame within FROZEN_BOUND of the previous one is a repeat; FROZEN_RUN repeats in a row make
  the stream frozen;
- a frame within FROZEN_BOUND of an older one (up to stream_history_s back) is a repeat too;
  LOOP_RUN such repeats in a row, of successively later frames, make the stream looping.

A repeated frame is never ok (it is no new evidence); a frozen or looping stream is refused until
RECOVER_S of new frames have come. The first WARMUP frames of a stream are never ok either: there
is nothing to compare them with yet, and decoders render a stream's first frames differently
from the identical ones that follow (seen with MJPG: a frozen clip's first two frames differ,
the repeats start at the third), so a freeze would pass unnoticed just long enough to unlock.

Limits: the first pass of a replayed clip is new to the check; a replay re-encoded on its way
(JPEG q70: 0.07 to 0.14 from its first showing) is as far from its original as sensor noise and
illumination changes of a still scene are from each other, so it is not flagged here: liveness
has to catch those.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..settings import DecisionSettings

SIZE = 16
FROZEN_BOUND = 0.004
FROZEN_RUN = 2  # repeats of the previous frame in a row (3 identical frames) that make a stream frozen
LOOP_RUN = 3
WARMUP = 3  # frames a stream must show before any of its frames can count
RECOVER_S = 2.0  # seconds of fresh frames after which a frozen or looping stream is trusted again
MIN_SIDE = 32
MAX_HISTORY = 3000


@dataclass(frozen=True)
class SanityResult:
    ok: bool
    reason: str | None = None


def fingerprint(frame: np.ndarray) -> np.ndarray:
    """16x16 float32 grayscale thumbnail of a BGR or grayscale uint8 frame."""
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def _invalid(frame: object) -> str | None:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        return "not a uint8 image"
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        return f"unexpected image shape {frame.shape}"
    if min(frame.shape[:2]) < MIN_SIDE:
        return f"image smaller than {MIN_SIDE} pixels"
    return None


class StreamSanity:
    """Per-camera check; `check(frame)` for every frame taken from the source, in order."""

    def __init__(self, settings: DecisionSettings, fps: float) -> None:
        self._capacity = int(min(max(settings.stream_history_s * fps, LOOP_RUN + 2), MAX_HISTORY))
        self._recover = max(3, round(RECOVER_S * fps))
        self.reset()

    def reset(self) -> None:
        """Forget the history (a new source, e.g. after reconnecting)."""
        self._ring = np.zeros((self._capacity, SIZE * SIZE), np.float32)
        self._count = 0  # frames seen; frame i lives at ring[i % capacity]
        self._frozen_run = 0
        self._loop_run = 0
        self._last_match = -1
        self._suspect: str | None = None
        self._fresh = 0

    def check(self, frame: np.ndarray) -> SanityResult:
        """ok=False for an invalid frame, a repeated frame, or any frame of a frozen/looping stream."""
        problem = _invalid(frame)
        if problem:
            return SanityResult(False, f"invalid frame: {problem}")
        fp = fingerprint(frame)
        repeat = self._compare(fp) if self._count else None
        self._ring[self._count % self._capacity] = fp.ravel()
        self._count += 1
        verdict = self._verdict(repeat)
        if verdict.ok and self._count <= WARMUP:
            return SanityResult(False, f"stream warming up ({self._count} of {WARMUP} frames seen)")
        return verdict

    def _compare(self, fp: np.ndarray) -> str | None:
        """Update the frozen/loop runs with this frame; describe what it repeats, if anything."""
        held = min(self._count, self._capacity)
        index = np.arange(self._count - held, self._count)  # frame numbers in the ring, oldest first
        dist = np.abs(self._ring[index % self._capacity] - fp.ravel()).mean(axis=1)
        repeated = dist <= FROZEN_BOUND
        self._frozen_run = self._frozen_run + 1 if repeated[-1] else 0
        older = repeated[:-1]
        if not older.any():
            self._loop_run, self._last_match = 0, -1
            return "the previous frame" if self._frozen_run else None
        match = int(index[:-1][older][-1])  # the most recent showing: runs then follow the loop's passes
        self._loop_run = self._loop_run + 1 if match > self._last_match >= 0 else 1
        self._last_match = match
        return "the previous frame" if self._frozen_run else f"the frame of {self._count - match} frames ago"

    def _verdict(self, repeat: str | None) -> SanityResult:
        if self._frozen_run >= FROZEN_RUN:
            self._suspect, self._fresh = "frozen", 0
        elif self._loop_run >= LOOP_RUN:
            self._suspect, self._fresh = "looping", 0
        elif self._suspect:
            self._fresh = self._fresh + 1 if repeat is None else 0
            if self._fresh >= self._recover:
                self._suspect = None
        if self._suspect:
            return SanityResult(False, f"{self._suspect} camera stream: the same frames keep coming")
        if repeat:
            return SanityResult(False, f"repeated frame: it repeats {repeat}")
        return SanityResult(True)
