"""Liveness evidence already taken for an attempt's frames, for the decision to reuse.

Each piece of liveness evidence (a frame's CNN score, a pair's surround lift, the face's shift
since the first frame) is a function of frames' pixels and faces alone, and frames are never
changed after capture (drawings go on copies). A value taken beside the frame's embedding
(`LivenessModel.prepare`) is therefore the very value `assess` would take on the decision
frame's critical path (measured: ~19 ms of the unlock's latency at 2 frames on 2 cores).
Entries hold frames alive: 96 entries are about 32 frames, as many as the memo this replaced.

Entries are keyed by the frames' identities. Each keeps its frames alive, so an id cannot be
reused while its entry exists, and the faces' numbers are compared as well: the same frame with
another box is another piece of evidence.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class EvidenceMemo:
    """A bounded, thread-safe memo of evidence per (kind, frames, faces); the oldest goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, tuple[tuple[np.ndarray, ...], object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, images: Sequence[np.ndarray], numbers: Sequence[np.ndarray], compute: Callable[[], T]) -> T:
        """The kept value for `kind` of these frames (`images`, by identity) and faces (`numbers`:
        boxes, landmarks, by value), or `compute()`, kept for next time. An exception from
        `compute` (a frame that cannot be judged) is raised and nothing is kept."""
        values = tuple(np.asarray(n, dtype=np.float64).tobytes() for n in numbers)  # a copy: later changes do not alias
        key = (kind, *(id(image) for image in images), *values)
        with self._lock:
            kept = self._entries.get(key)
        if kept is not None and len(kept[0]) == len(images) and all(a is b for a, b in zip(kept[0], images)):
            return kept[1]  # type: ignore[return-value]
        value = compute()
        with self._lock:
            self._entries[key] = (tuple(images), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
