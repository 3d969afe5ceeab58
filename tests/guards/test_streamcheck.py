"""Frozen and looping camera streams on real NUAA frames: the bounds measured on data, replays and
frozen frames refused, real live sequences, noisy static scenes and flicker never flagged."""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.guards.streamcheck import (
    FROZEN_BOUND,
    WARMUP,
    SanityResult,
    StreamSanity,
    fingerprint,
)
from facelock_mqtt.settings import DecisionSettings

FPS = 5.0
LOW_NOISE = 0.5  # grey levels: about the lowest sensor noise estimated in NUAA live frames


@pytest.fixture(scope="module")
def sessions(shared_data: Path) -> list[list[np.ndarray]]:
    """NUAA live captures, one list per person/session/condition, in capture order."""
    root = shared_data / "nuaa"
    groups: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    with open(root / "labels.csv") as f:
        for row in csv.DictReader(f):
            if row["label"] == "live":
                frame_no = int(row["path"].rsplit("_", 1)[1].split(".")[0])
                key = (row["identity"], row["session"], row["glasses_flag"], row["pos_light"])
                groups[key].append((frame_no, row["path"]))
    out = [[cv2.imread(str(root / p)) for _, p in sorted(g)] for _, g in sorted(groups.items())]
    assert len(out) >= 15 and all(img is not None for s in out for img in s)
    return out


def sanity(**settings) -> StreamSanity:
    return StreamSanity(DecisionSettings(**settings), FPS)


def feed(check: StreamSanity, frames) -> list[SanityResult]:
    return [check.check(f) for f in frames]


def noisy(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32) * sigma
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


def jpeg_again(image: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def noise_sigma(image: np.ndarray) -> float:
    """Immerkaer's fast noise estimate (1996) of a grayscale version of `image`."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = np.abs(cv2.filter2D(gray, -1, kernel)[1:-1, 1:-1])
    return float(np.sqrt(np.pi / 2) * response.mean() / 6)


def dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(fingerprint(a) - fingerprint(b)).mean())


def decoded(data: np.ndarray) -> np.ndarray:
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def test_the_frozen_bound_sits_under_sensor_noise(sessions, capsys) -> None:
    """The data behind FROZEN_BOUND (printed for the docs)."""
    rng = np.random.default_rng(1)
    sigmas = [noise_sigma(img) for s in sessions for img in s]
    consecutive = [dist(a, b) for s in sessions for a, b in itertools.pairwise(s)]
    still = [dist(noisy(s[0], LOW_NOISE, rng), noisy(s[0], LOW_NOISE, rng)) for s in sessions for _ in range(3)]
    jpegs = [cv2.imencode(".jpg", f)[1] for f in sessions[0]]
    same_jpeg = [dist(decoded(j), decoded(j)) for j in jpegs]
    re_encoded = [dist(f, jpeg_again(f, 70)) for s in sessions for f in s[:2]]
    with capsys.disabled():
        print(
            f"\nNUAA live noise estimate: min {min(sigmas):.2f}, median {np.median(sigmas):.2f} grey levels"
            f"\nfingerprint distance, consecutive NUAA live frames: min {min(consecutive):.3f}"
            f"\nstill scene + noise sigma {LOW_NOISE}: min {min(still):.4f} (FROZEN_BOUND {FROZEN_BOUND})"
            f"\nsame JPEG decoded twice: max {max(same_jpeg):.4f}; "
            f"re-encoded at q70: {min(re_encoded):.3f}..{max(re_encoded):.3f} (not flagged)"
        )
    assert min(sigmas) >= 0.8 * LOW_NOISE  # the synthetic noise is no louder than the quietest real frame
    assert max(same_jpeg) == 0.0
    assert 3 * FROZEN_BOUND <= min(still) < min(consecutive)


def test_real_live_sequences_are_never_flagged(sessions) -> None:
    for frames in sessions:
        assert all(r.ok for r in feed(sanity(), frames)[WARMUP:]), "a real NUAA session was flagged"
    everyone = [f for s in sessions for f in s]  # people coming and going in one long stream
    results = feed(sanity(stream_history_s=600), everyone)
    assert [r for r in results[WARMUP:] if not r.ok] == []


def test_a_still_noisy_scene_is_not_frozen(sessions) -> None:
    rng = np.random.default_rng(2)
    scene = sessions[0][0].astype(np.float32)
    results = feed(sanity(), (noisy(scene, LOW_NOISE, rng) for _ in range(80)))
    assert all(r.ok for r in results[WARMUP:])


@pytest.mark.parametrize("period", [2, 7])
def test_flicker_is_not_a_loop(sessions, period: int) -> None:
    rng = np.random.default_rng(period)
    scene = sessions[3][0].astype(np.float32)
    gains = [1.0 + 0.05 * (i % period) / period for i in range(60)]
    results = feed(sanity(), (noisy(scene * g, 1.0, rng) for g in gains))
    assert all(r.ok for r in results[WARMUP:]), [r.reason for r in results if not r.ok][:3]


def test_a_frozen_real_frame_is_refused_until_fresh_frames_return(sessions) -> None:
    live = sessions[1]
    check = sanity()
    assert all(r.ok for r in feed(check, live[:6])[WARMUP:])
    data = cv2.imencode(".jpg", live[6])[1]
    stuck = [cv2.imdecode(data, cv2.IMREAD_COLOR) for _ in range(8)]  # a camera resending one JPEG
    results = feed(check, stuck)
    assert results[0].ok  # the first showing is a new frame
    assert not results[1].ok and "repeated frame" in results[1].reason
    assert all(not r.ok and "frozen" in r.reason for r in results[2:])
    recover = feed(check, sessions[2])  # the stream moves again: trusted after 2 s of new frames
    assert [r.ok for r in recover] == [False] * 9 + [True] * 3
    assert "frozen" in recover[0].reason


def test_a_looping_real_sequence_is_refused(sessions) -> None:
    clip = sessions[4]
    check = sanity()
    first = feed(check, clip)
    again = feed(check, clip + clip)
    assert all(r.ok for r in first[WARMUP:])
    assert not any(r.ok for r in again)
    assert "repeated frame" in again[0].reason and "looping" in again[-1].reason
    assert sum("looping" in r.reason for r in again) >= len(again) - 2


def test_a_replay_decoded_from_the_same_jpegs_is_refused(sessions) -> None:
    """A looping MJPEG or snapshot replay: every pass decodes the same JPEG data again."""
    clip = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1] for f in sessions[5]]
    check = sanity()
    passes = [feed(check, [decoded(data) for data in clip]) for _ in range(3)]
    assert all(r.ok for r in passes[0][WARMUP:])
    assert not any(r.ok for r in passes[1] + passes[2])
    assert all("looping" in r.reason for r in passes[1][2:] + passes[2])


def test_an_alternating_pair_is_refused(sessions) -> None:
    a, b = sessions[6][0], sessions[6][5]
    check = sanity()
    assert all(r.ok for r in feed(check, sessions[6][1:4])[WARMUP:])
    results = feed(check, [a, b] * 5)
    assert results[0].ok and results[1].ok
    assert not any(r.ok for r in results[2:])
    assert all("looping" in r.reason for r in results[4:])


def test_a_loop_longer_than_the_history_is_not_seen(sessions) -> None:
    """The documented limit of stream_history_s: 12 frames at 5 fps need more than 2 s of history."""
    clip = sessions[7]
    results = feed(sanity(stream_history_s=2.0), clip * 2)
    assert all(r.ok for r in results[WARMUP:])


@pytest.mark.parametrize(
    "frame",
    [None, np.zeros((480, 640, 3), np.float32), np.zeros((16, 640, 3), np.uint8), np.zeros((480, 640, 4), np.uint8)],
)
def test_invalid_frames_are_refused_without_touching_history(sessions, frame) -> None:
    check = sanity()
    feed(check, sessions[0][2 : 2 + WARMUP])
    assert check.check(sessions[0][0]).ok
    result = check.check(frame)
    assert not result.ok and "invalid frame" in result.reason
    assert check.check(sessions[0][1]).ok  # the invalid frame neither counted nor broke the check


def test_a_stream_counts_only_after_its_first_frames(sessions) -> None:
    """Decoders render a stream's first frames differently from identical ones that follow: a
    frozen stream would otherwise pass its first two frames, enough for k=2 to unlock."""
    results = feed(sanity(), sessions[0][: WARMUP + 2])
    assert [r.ok for r in results] == [False] * WARMUP + [True, True]
    assert all("warming up" in r.reason for r in results[:WARMUP])
