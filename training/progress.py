"""A dependency-free progress line: loss, learning rate and images/s while training."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Redraws one line on a terminal; prints a line every `every_s` seconds into a log file."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.done, self.images = 0, 0
        self.start = self.last = time.perf_counter()
        self.metrics: dict[str, float] = {}

    def update(self, images: int, **metrics: float) -> None:
        self.done += 1
        self.images += images
        self.metrics = metrics
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every_s or self.done == self.total):
            self.last = now
            self._draw(now)

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.start, 1e-9)

    def _draw(self, now: float) -> None:
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        values = "  ".join(f"{k} {v:.4g}" for k, v in self.metrics.items())
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}  {values}  {self.rate():.1f} img/s"
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
