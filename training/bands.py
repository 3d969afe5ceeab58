"""Quality-band calibration: a threshold per probe-quality band, fitted on held-out aligned crops.

Low-resolution and blurred faces score higher against strangers than sharp ones, so the global
threshold does not hold its FAR for them. LFW crops carry no face size, so each band's probes
are made by degrading every crop deterministically (downscaled to what a face of N px gives and
back up, or Gaussian-blurred), and each degraded probe is compared with the CLEAN crops of
everyone else: at the door, templates passed enrollment's quality gate, probes did not need to
be sharp. A band is the probe range of `Quality.size_px` and `Quality.blur`, the latter measured
on the degraded crop by `quality.sharpness`, the very function the door uses.

The detector's confidence is not a band axis: YuNet's score cannot be re-measured on aligned
crops, so there is no honest calibration of it here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from facelock_mqtt.errors import FaceLockError
from facelock_mqtt.models.bundle import QualityBand, Threshold
from facelock_mqtt.models.metrics import FARS
from facelock_mqtt.pipeline.align import ARCFACE_TEMPLATE, CROP_SIZE
from facelock_mqtt.pipeline.quality import sharpness

log = logging.getLogger(__name__)

# `Quality.size_px` of the face in an aligned crop itself: eye distance of the template x 2.5.
CROP_FACE_PX = float(np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0])) * 2.5
BLOCK = 512  # probes scored per block: 512 x 7,701 float32 scores = 16 MB


@dataclass(frozen=True)
class BandSpec:
    """A band's probe range and how its probes are made: `degrade` sets each probe's face size
    (px) or blur sigma, spread evenly over [low, high)."""

    name: str
    degrade: Literal["none", "size", "blur"]
    low: float = 0.0
    high: float = 0.0
    min_face_px: float | None = None
    max_face_px: float | None = None
    max_blur: float | None = None  # blur bands keep only probes measured below it


# Face-size bands: the low-resolution band is 24-40 px (below the default quality gate
# of 40 px, but `quality.min_face_px` may be set lower); no band covers faces under 24 px, so
# those meet the strictest threshold. Clean LFW crops (faces of about 88 px and more, resampled
# to 112) stand for the largest faces. Blur: below 60 (clean LFW crops: median 205, 5th
# percentile 79; sigma 0.8-2.0 gives 9-150, and only probes measuring below 60 count).
DEFAULT_BANDS = (
    BandSpec("tiny", "size", 24.0, 40.0, min_face_px=24.0, max_face_px=40.0),
    BandSpec("small", "size", 40.0, 60.0, min_face_px=40.0, max_face_px=60.0),
    BandSpec("medium", "size", 60.0, 100.0, min_face_px=60.0, max_face_px=100.0),
    BandSpec("large", "none", min_face_px=100.0),
    BandSpec("blurred", "blur", 0.8, 2.0, max_blur=60.0),
)


def spread(n: int, low: float, high: float) -> np.ndarray:
    """n values covering [low, high) evenly in a fixed scrambled order (golden-ratio steps), so
    neighbouring files (often one person) get different degradations."""
    return low + (high - low) * ((np.arange(n) * 0.6180339887498949) % 1.0)


def downscale(crop: np.ndarray, face_px: float) -> np.ndarray:
    """The aligned crop a face of `face_px` would give: its pixels are all the detail there is,
    upsampled to 112 as the aligner's warp does (bilinear). Larger faces lose nothing."""
    scale = face_px / CROP_FACE_PX
    if scale >= 1.0:
        return crop
    side = max(2, round(CROP_SIZE * scale))
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)


def degraded(crops: list[np.ndarray], spec: BandSpec) -> list[np.ndarray]:
    values = spread(len(crops), spec.low, spec.high)
    if spec.degrade == "size":
        return [downscale(c, v) for c, v in zip(crops, values, strict=True)]
    if spec.degrade == "blur":
        return [cv2.GaussianBlur(c, (0, 0), float(v)) for c, v in zip(crops, values, strict=True)]
    return list(crops)


@dataclass
class BandScores:
    top: np.ndarray  # the highest impostor scores, descending
    n_impostor: int
    genuine: np.ndarray
    n_probes: int


def score_band(
    probes: np.ndarray, source: np.ndarray, templates: np.ndarray, labels: np.ndarray, keep: int
) -> BandScores:
    """Probe k (made from crop `source[k]`) against template j of every other identity
    (impostors) and of its own identity but j != source[k] (genuine), in blocks; only the `keep`
    highest impostor scores are kept."""
    top, n_impostor, genuine = np.empty(0, np.float32), 0, []
    for start in range(0, len(probes), BLOCK):
        own = source[start : start + BLOCK]
        scores = probes[start : start + BLOCK] @ templates.T
        same = labels[own, None] == labels[None, :]
        same_other = same.copy()
        same_other[np.arange(len(own)), own] = False  # a probe against its own clean crop is no pair
        genuine.append(scores[same_other])
        impostor = scores[~same]
        n_impostor += len(impostor)
        merged = np.concatenate([top, impostor])
        top = merged if len(merged) <= keep else np.partition(merged, len(merged) - keep)[-keep:]
    return BandScores(np.sort(top)[::-1], n_impostor, np.concatenate(genuine), len(probes))


def band_thresholds(scores: BandScores, fars=FARS) -> tuple[Threshold, ...]:
    """The threshold at each FAR as `metrics.threshold_at_far` defines it (floor(far * n)
    impostors strictly above), every FAR kept: `Bundle.band_thresholds` applies the rule of three."""
    out = []
    for far in fars:
        allowed = int(np.floor(far * scores.n_impostor))
        if allowed >= len(scores.top):
            raise FaceLockError(f"kept {len(scores.top)} impostor scores, FAR {far:g} needs {allowed + 1}")
        threshold = float(min(scores.top[allowed], 1.0))  # float32 rounding can pass 1 by a step
        tar = float(np.mean(scores.genuine > threshold)) if len(scores.genuine) else None
        out.append(Threshold(far=far, threshold=threshold, n_impostor=scores.n_impostor, tar=tar))
    return tuple(out)


def fit_band(spec: BandSpec, scores: BandScores, fars=FARS) -> QualityBand:
    return QualityBand(
        name=spec.name,
        min_face_px=spec.min_face_px,
        max_face_px=spec.max_face_px,
        max_blur=spec.max_blur,
        n_genuine=len(scores.genuine),
        n_impostor=scores.n_impostor,
        max_impostor_score=float(min(scores.top[0], 1.0)),
        thresholds=band_thresholds(scores, fars),
    )


def calibrate_bands(
    crops: list[np.ndarray], labels: list[str], embed, specs=DEFAULT_BANDS, fars=FARS
) -> tuple[QualityBand, ...]:
    """One QualityBand per spec; `embed` maps a list of aligned BGR crops to unit embeddings."""
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    templates = embed(crops).astype(np.float32)
    n_pairs = len(crops) * len(crops)
    keep = int(np.floor(max(fars) * n_pairs)) + 1
    bands = []
    for spec in specs:
        probes = degraded(crops, spec)
        rows = np.arange(len(probes))
        if spec.max_blur is not None:  # the band is what the door would measure, not the sigma
            blur = np.array([sharpness(p) for p in probes])
            rows = np.flatnonzero(blur < spec.max_blur)
            if len(rows) < 2:
                raise FaceLockError(
                    f"band {spec.name}: only {len(rows)} degraded probes measure below blur {spec.max_blur}"
                )
        embedded = templates if spec.degrade == "none" else embed([probes[i] for i in rows]).astype(np.float32)
        scores = score_band(embedded, rows, templates, codes, keep)
        band = fit_band(spec, scores, fars)
        log.info("band %s: %d probes, %d impostor / %d genuine pairs, threshold at %g: %.4f", spec.name, len(rows),
                 band.n_impostor, band.n_genuine, fars[-1], band.thresholds[-1].threshold)  # fmt: skip
        bands.append(band)
    return tuple(bands)


def write_bands_into(path: Path, bands: tuple[QualityBand, ...]) -> None:
    """Set only the `bands` key of the `calibration` block of a calibration JSON file (such as
    facelock_mqtt/models/default_calibration.json); every other key is left as it is."""
    data = json.loads(path.read_text())
    if not isinstance(data.get("calibration"), dict):
        raise FaceLockError(f"{path} has no calibration block")
    data["calibration"]["bands"] = [band.model_dump(mode="json") for band in bands]
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def band_table(bands: tuple[QualityBand, ...]) -> str:
    """A markdown table of the bands: impostor count, thresholds and TAR at each FAR."""
    fars = [t.far for t in bands[0].thresholds] if bands else []
    head = "| band | range | n_impostor | n_genuine | " + " | ".join(f"thr / TAR @ {f:g}" for f in fars) + " |"
    lines = [head, "|" + "---|" * (4 + len(fars))]
    for b in bands:
        span = []
        if b.min_face_px is not None or b.max_face_px is not None:
            high = "∞" if b.max_face_px is None else f"{b.max_face_px:g}"
            span.append(f"face {b.min_face_px or 0:g}-{high} px")
        if b.max_blur is not None:
            span.append(f"blur < {b.max_blur:g}")
        cells = [f"{t.threshold:.3f} / {100 * (t.tar or 0):.1f} %" for t in b.thresholds]
        row = f"| {b.name} | {', '.join(span)} | {b.n_impostor:,} | {b.n_genuine:,} | "
        lines.append(row + " | ".join(cells) + " |")
    return "\n".join(lines)
