"""`facelock recalibrate`: do the served thresholds still hold for THIS installation?

The shipped thresholds were calibrated on LFW; a door camera sees darker, smaller, blurrier
faces, and a false-accept rate measured on one camera need not transfer. This check compares a
cohort of LFW faces (people who are not enrolled: the impostors) passed through this camera's
conditions (its recent face brightness, size and sharpness from the drift monitor) with every
enrolled template, and counts how often each calibrated threshold would have let one in.

A cohort of a few thousand faces against a small gallery gives thousands of comparisons, not
millions: it can refute a threshold (its false accepts are significantly above the target, at
95 %) long before it can confirm 1e-6. Verdicts: `meets` (the 95 % upper bound is at or below the
target), `not shown` (no significant excess, but too few comparisons to confirm), `refused`
(significantly above the target: do not serve it). The genuine side: each enrolled person's
enrollment photos matched against each other (leave one out) and their unlock scores' trend.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError
from ..guards.drift import saved_monitors
from ..pipeline.imageio import read_image
from ..recognizer import Recognizer
from ..settings import Settings

CONFIDENCE = 0.05  # one-sided, each bound
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
BLUR_SIGMAS = (0.0, 0.5, 0.8, 1.2, 1.6, 2.2, 3.0)


def poisson_bounds(k: int, n: int) -> tuple[float, float]:
    """95 % one-sided lower and upper bounds on a rate with k events in n trials (Poisson: exact
    up to 100 events, the normal approximation above, where it is close)."""
    if k > 100:
        return max(k - 1.645 * math.sqrt(k), 0.0) / n, (k + 1.645 * math.sqrt(k) + 1.0) / n

    def at_least(count: int, lam: float) -> float:  # P(X >= count), increasing in lam
        return 1.0 - sum(math.exp(i * math.log(lam) - lam - math.lgamma(i + 1)) for i in range(count)) if lam > 0 else 0.0

    def solve(count: int, target: float) -> float:  # lam with P(X >= count) = target
        low, high = 0.0, 4.0 * k + 20.0
        for _ in range(80):
            mid = (low + high) / 2
            low, high = (mid, high) if at_least(count, mid) < target else (low, mid)
        return (low + high) / 2

    lower = 0.0 if k == 0 else solve(k, CONFIDENCE)
    return lower / n, solve(k + 1, 1.0 - CONFIDENCE) / n


def verdict(false_accepts: int, comparisons: int, target: float) -> dict:
    lower, upper = poisson_bounds(false_accepts, comparisons)
    state = "refused" if lower > target else "meets" if upper <= target else "not shown"
    return {
        "false_accepts": false_accepts, "comparisons": comparisons, "far_observed": false_accepts / comparisons,
        "far_lower": lower, "far_upper": upper, "verdict": state,
    }  # fmt: skip


def cohort_paths(folder: Path, size: int, enrolled: set[str], seed: int = 13) -> list[Path]:
    """Up to `size` aligned faces, one folder per identity, none named like an enrolled person."""
    if not folder.is_dir():
        raise ConfigError(f"recalibrate: {folder} is not a folder of <identity>/<aligned 112x112 face>")
    paths = [p for p in sorted(folder.glob("*/*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.parent.name not in enrolled]
    if not paths:
        raise ConfigError(f"recalibrate: no face images under {folder}")
    random.Random(seed).shuffle(paths)
    return paths[:size]


def _centre(crop: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)[16:96, 16:96]  # as pipeline/quality.py measures


def through_camera(crops: list[np.ndarray], conditions: dict[str, float | None]) -> list[np.ndarray]:
    """The cohort as this camera would show it: its face brightness, its face size (pixels across
    the face: a smaller face loses detail before alignment), then its sharpness."""
    out = []
    for crop in crops:
        image = crop.astype(np.float32)
        if conditions.get("brightness"):
            image *= conditions["brightness"] / max(float(_centre(crop).mean()), 1.0)
        image = np.clip(image, 0, 255).astype(np.uint8)
        size = conditions.get("face_size")
        if size and size < 112:
            side = max(int(size), 16)
            image = cv2.resize(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), (112, 112))
        out.append(image)
    target = conditions.get("blur")
    if not target:
        return out

    def sharpness(images: list[np.ndarray]) -> float:
        return float(np.median([cv2.Laplacian(_centre(i), cv2.CV_32F).var() for i in images]))

    def blurred(sigma: float) -> list[np.ndarray]:
        return out if sigma == 0 else [cv2.GaussianBlur(i, (0, 0), sigma) for i in out]

    sigma = min(BLUR_SIGMAS, key=lambda s: abs(math.log(max(sharpness(blurred(s)), 1e-3) / target)))
    return blurred(sigma)


def camera_conditions(settings: Settings, door: str | None) -> dict[str, dict[str, float | None]]:
    """Each door's recent face brightness, size and sharpness (drift monitor); {} without any."""
    conditions = {}
    for name, monitor in saved_monitors(settings.data_dir, settings.drift).items():
        if door in (None, name):
            report = monitor.report()
            conditions[name] = {key: report[key]["recent_mean"] for key in ("brightness", "face_size", "blur")}
    if door is not None and door not in conditions:
        raise ConfigError(f"recalibrate: no drift state for door {door!r} yet (the service writes it while it runs)")
    return conditions


def genuine_scores(rec: Recognizer) -> dict[str, list[float]]:
    """Each person's enrollment templates against each other (every pair once)."""
    matcher = rec.matcher
    scores = {}
    for name in matcher.names:
        own = matcher.templates[matcher.people == name]
        pairs = own @ own.T
        scores[name] = pairs[np.triu_indices(len(own), k=1)].tolist()
    return scores


def recalibrate(rec: Recognizer, settings: Settings, data: Path, cohort: int, door: str | None = None) -> dict:
    matcher = rec.matcher
    if not len(matcher.people):
        raise ConfigError("recalibrate: nobody is enrolled; the check compares the cohort with enrolled templates")
    crops = [read_image(p) for p in cohort_paths(data, cohort, set(matcher.names))]
    conditions = camera_conditions(settings, door) or {"(no camera conditions yet: LFW as is)": {}}
    served = rec.bundle.threshold_for(settings.match.target_far)
    genuine = genuine_scores(rec)
    all_genuine = np.asarray([s for scores in genuine.values() for s in scores])
    result = {
        "target_far": settings.match.target_far, "served_threshold": served.threshold, "cohort": len(crops),
        "templates": int(len(matcher.people)),
        "genuine": {
            "pairs": int(len(all_genuine)),
            "tar_at_served": float(np.mean(all_genuine > served.threshold)) if len(all_genuine) else None,
            "lowest": {name: round(min(s), 4) for name, s in genuine.items() if s},
        },
        "aging": [a.as_dict() for a in rec.template_aging()],
        "doors": {},
    }  # fmt: skip
    for name, condition in conditions.items():
        embeddings = rec.engine.embed_aligned(through_camera(crops, condition))
        scores = (embeddings @ matcher.templates.T).ravel()
        rows = []
        for point in rec.bundle.manifest.calibration.thresholds:
            row = {"far": point.far, "threshold": point.threshold, **verdict(int(np.sum(scores > point.threshold)), scores.size, point.far)}
            rows.append(row)
        served_row = next(r for r in rows if r["threshold"] == served.threshold)
        result["doors"][name] = {
            "conditions": condition, "max_impostor": float(scores.max()), "thresholds": rows,
            "served": served_row["verdict"],
        }  # fmt: skip
    return result


def format_result(result: dict) -> str:
    lines = [
        f"served threshold {result['served_threshold']:.4f} for FAR {result['target_far']:g}; cohort {result['cohort']} "
        f"faces x {result['templates']} templates",
        f"genuine: {result['genuine']['pairs']} enrollment pairs, TAR at the served threshold "
        f"{result['genuine']['tar_at_served']}",
    ]
    lines += [f"aging: {a['person']} falls {a['drop']:.3f} over {a['unlocks']} unlocks" for a in result["aging"] if a["flagged"]]
    for door, report in result["doors"].items():
        lines.append(f"{door}: conditions {report['conditions']}, closest impostor {report['max_impostor']:.3f}")
        for row in report["thresholds"]:
            lines.append(
                f"  FAR {row['far']:g} threshold {row['threshold']:.4f}: {row['false_accepts']} of {row['comparisons']} "
                f"(95 % bounds {row['far_lower']:.2e}..{row['far_upper']:.2e}) {row['verdict'].upper()}"
            )
        lines.append(f"  served threshold: {report['served'].upper()}")
    return "\n".join(lines)
