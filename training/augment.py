"""Door-condition augmentation, chosen from the served model's error analysis (docs/TRAINING.md).

Each degradation is a function `(crop, rng) -> crop` on a 112x112 BGR uint8 aligned crop, and
each has its own probability in `AugmentConfig` (0 switches it off). `Augmenter` applies them in
a fixed order and counts how often each fired, so a run reports what it trained on.

The same functions, with fixed parameters, make the degraded test slices of `compare`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import cv2
import numpy as np

from facelock_mqtt.pipeline.align import ARCFACE_TEMPLATE

from .config import AugmentConfig

# Face size as facelock's quality gate measures it (eye distance x 2.5), in the aligned crop.
CROP_FACE_PX = float(np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0]) * 2.5)
CENTRE = (56.0, 56.0)

Rng = np.random.Generator


def grey(crop: np.ndarray, rng: Rng) -> np.ndarray:
    """IR night look: one grey channel, contrast slightly flattened (IR skin has little texture)."""
    g = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    flatten = rng.uniform(0.7, 1.0)
    g = (g - g.mean()) * flatten + g.mean()
    return cv2.cvtColor(np.clip(g, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def low_light(crop: np.ndarray, rng: Rng, gamma: tuple[float, float] = (1.8, 3.0),
              noise: tuple[float, float] = (3.0, 10.0)) -> np.ndarray:  # fmt: skip
    """Dusk at the door: a darkening gamma curve plus sensor noise (Gaussian, per pixel)."""
    x = (crop.astype(np.float32) / 255.0) ** rng.uniform(*gamma) * 255.0
    x += rng.normal(0.0, rng.uniform(*noise), crop.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


def low_res(crop: np.ndarray, rng: Rng, face_px: tuple[float, float] = (24.0, 40.0)) -> np.ndarray:
    """A far face: down to a `face_px` face (quality's eye-distance x 2.5 measure) and back up to 112."""
    scale = rng.uniform(*face_px) / CROP_FACE_PX
    side = max(4, int(round(112 * scale)))
    small = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR)


def motion_blur(crop: np.ndarray, rng: Rng, length: tuple[int, int] = (5, 11)) -> np.ndarray:
    """A walking visitor: a line kernel of `length` px at a random angle."""
    n = int(rng.integers(length[0], length[1] + 1))
    kernel = np.zeros((n, n), np.float32)
    kernel[n // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (n, n))
    return cv2.filter2D(crop, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def jpeg(crop: np.ndarray, rng: Rng, quality: tuple[int, int] = (15, 40)) -> np.ndarray:
    """A cheap camera's stream: JPEG at a low quality, decoded again."""
    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(quality[0], quality[1] + 1))])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def rotate(crop: np.ndarray, rng: Rng, degrees: float = 10.0) -> np.ndarray:
    """Residual roll after alignment (landmark jitter, a tilted head): up to `degrees` either way."""
    matrix = cv2.getRotationMatrix2D(CENTRE, rng.uniform(-degrees, degrees), 1.0)
    return cv2.warpAffine(crop, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def steps(cfg: AugmentConfig) -> list[tuple[str, float, Callable[[np.ndarray, Rng], np.ndarray]]]:
    """(name, probability, function) in application order: optics, then sensor, then encoding."""
    return [
        ("rotate", cfg.rotate, lambda c, r: rotate(c, r, cfg.rotate_deg)),
        ("motion_blur", cfg.motion_blur, motion_blur),
        ("low_res", cfg.low_res, lambda c, r: low_res(c, r, cfg.low_res_face_px)),
        ("grey", cfg.grey, grey),
        ("low_light", cfg.low_light, low_light),
        ("jpeg", cfg.jpeg, jpeg),
    ]


class Augmenter:
    """Applies each enabled degradation with its probability; `counts` says how often each fired."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.steps = [s for s in steps(cfg) if s[1] > 0]
        self.counts: Counter[str] = Counter()
        self.images = 0

    def __call__(self, crop: np.ndarray, rng: Rng) -> np.ndarray:
        self.images += 1
        for name, probability, apply in self.steps:
            if rng.random() < probability:
                crop = apply(np.ascontiguousarray(crop), rng)
                self.counts[name] += 1
        return crop

    def report(self) -> dict:
        return {"images": self.images, "applied": dict(self.counts),
                "enabled": [name for name, _, _ in self.steps]}  # fmt: skip


# Fixed, strong settings for the degraded test slices: one condition at a time.
DEGRADED: dict[str, Callable[[np.ndarray, Rng], np.ndarray]] = {
    "grey (IR look)": grey,
    "low light": low_light,
    "low resolution (30 px face)": lambda c, r: low_res(c, r, (30.0, 30.0)),
    "motion blur": motion_blur,
    "jpeg q15-40": jpeg,
}


def degrade_all(crops: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """Every crop through one DEGRADED condition, reproducibly."""
    rng = np.random.default_rng(seed)
    return np.stack([DEGRADED[name](np.ascontiguousarray(c), rng) for c in crops])
