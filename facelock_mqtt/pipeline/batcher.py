"""Opportunistic batching for the shared embedder: faces that doors hand over together share one run.

Every door of a service calls the one embedder from its own thread. A face that finds the
embedder free is run at once, alone: nobody waits for company, and there is no timer. Faces that
arrive while a run is in progress queue up, and the next run takes them together (at most
`max_batch`, oldest first): two doors seeing faces at the same moment pay one onnxruntime run
instead of two competing ones. The run is made by one of the waiting callers, so no thread of
its own is needed; each caller gets its own vector, or, when the run fails, that run's exception
(the door then stays locked).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Batcher", "BatchStats"]


@dataclass
class BatchStats:
    runs: int = 0  # onnxruntime runs made
    faces: int = 0  # faces embedded by them
    failed_runs: int = 0
    largest: int = 0  # most faces in one run
    sizes: dict[int, int] = field(default_factory=dict)  # faces per run -> runs of that size


class _Request:
    def __init__(self, crop: np.ndarray) -> None:
        self.crop = crop
        self.done = False
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None


class Batcher:
    """`embed(crop)` for many threads at once over `run(crops) -> (N, D) vectors`."""

    def __init__(self, run: Callable[[list[np.ndarray]], np.ndarray], max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self._run = run
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False  # a run is in progress
        self._stats = BatchStats()

    @property
    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(**{**vars(self._stats), "sizes": dict(self._stats.sizes)})

    @property
    def waiting(self) -> int:
        """Faces queued for the next run."""
        with self._cond:
            return len(self._pending)

    def embed(self, crop: np.ndarray) -> np.ndarray:
        """The vector of one aligned crop; raises the exception of the run that embedded it."""
        request = _Request(crop)
        with self._cond:
            self._pending.append(request)
            while not request.done:
                if self._busy:
                    self._cond.wait()  # woken when the run in progress ends
                    continue
                # The embedder is free: this caller runs every face waiting now, its own included
                # unless more than max_batch are ahead of it (then it loops for the next run).
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._busy = True
                outcome = None
                self._cond.release()  # the run goes without the lock, so others can queue meanwhile
                try:
                    outcome = self._outcome(batch)
                finally:
                    self._cond.acquire()
                    self._finish(batch, outcome)
        if request.error is not None:
            raise request.error
        return request.vector

    def _outcome(self, batch: list[_Request]) -> np.ndarray | BaseException:
        """The vectors of one run, or the exception it raised (for every caller of the batch)."""
        try:
            vectors = self._run([request.crop for request in batch])
            if len(vectors) != len(batch):
                raise RuntimeError(f"the embedder returned {len(vectors)} vectors for {len(batch)} faces")
            return vectors
        except Exception as exc:
            return exc

    def _finish(self, batch: list[_Request], outcome: np.ndarray | BaseException | None) -> None:
        """Hand each caller its result and free the embedder; called with the lock held."""
        failed = not isinstance(outcome, np.ndarray)
        for index, request in enumerate(batch):
            if failed:
                # None: the run was interrupted (KeyboardInterrupt, SystemExit): nobody gets a vector.
                request.error = outcome if outcome is not None else RuntimeError("the embedding run was interrupted")
            else:
                request.vector = outcome[index].copy()  # its own row, not a view of the whole batch
            request.done = True
        stats = self._stats
        stats.runs += 1
        stats.faces += len(batch)
        stats.failed_runs += failed
        stats.largest = max(stats.largest, len(batch))
        stats.sizes[len(batch)] = stats.sizes.get(len(batch), 0) + 1
        self._busy = False
        self._cond.notify_all()
