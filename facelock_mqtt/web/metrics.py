"""The last 24 h of each door's sensor values, in memory, for the Model & health page's charts."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping

HISTORY_S = 24 * 3600.0
MAX_POINTS = 8640  # one point per 10 s sensor period over 24 h


class MetricsHistory:
    """A ring buffer per door of (time, {sensor: value}); written by door threads, read by the panel."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self._points: dict[str, deque[tuple[float, dict[str, float]]]] = {}
        self._max = max_points
        self._lock = threading.Lock()

    def add(self, door: str, values: Mapping[str, float], ts: float | None = None) -> None:
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
        with self._lock:
            self._points.setdefault(door, deque(maxlen=self._max)).append((time.time() if ts is None else ts, numbers))

    def latest(self, door: str) -> dict[str, float]:
        with self._lock:
            points = self._points.get(door)
            return dict(points[-1][1]) if points else {}

    def series(self, since_s: float = HISTORY_S, now: float | None = None) -> dict[str, dict[str, list[list[float]]]]:
        """{door: {sensor: [[ts, value], ...]}} for the points of the last `since_s` seconds."""
        start = (time.time() if now is None else now) - since_s
        with self._lock:
            copied = {door: [p for p in points if p[0] >= start] for door, points in self._points.items()}
        result: dict[str, dict[str, list[list[float]]]] = {}
        for door, points in copied.items():
            sensors: dict[str, list[list[float]]] = {}
            for ts, values in points:
                for key, value in values.items():
                    sensors.setdefault(key, []).append([round(ts, 1), round(value, 3)])
            result[door] = sensors
        return result
