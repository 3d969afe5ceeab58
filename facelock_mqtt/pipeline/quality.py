"""Face quality: size, blur, brightness and a pose proxy, each failure with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..settings import QualitySettings
from .detect import Face


@dataclass(frozen=True)
class Quality:
    size_px: float  # distance between the eyes x 2.5 ~ face width, frame pixels
    blur: float  # Laplacian variance of the aligned crop
    brightness: float  # mean grey level of the aligned crop
    yaw: float  # |nose offset from the eye midpoint| / eye distance
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.reasons


def face_size(face: Face) -> float:
    left, right = face.landmarks[0], face.landmarks[1]
    return float(np.linalg.norm(right - left)) * 2.5


def yaw_proxy(face: Face) -> float:
    left, right, nose = face.landmarks[0], face.landmarks[1], face.landmarks[2]
    eye_distance = float(np.linalg.norm(right - left))
    if eye_distance < 1e-3:
        return 1.0
    axis = (right - left) / eye_distance
    return abs(float(np.dot(nose - (left + right) / 2, axis))) / eye_distance


def _centre(crop: np.ndarray) -> np.ndarray:
    # The central region avoids the black border a warp leaves near image edges.
    return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)[16:96, 16:96]


def _laplacian_variance(centre: np.ndarray) -> float:
    return float(cv2.Laplacian(centre, cv2.CV_32F).var())


def sharpness(crop: np.ndarray) -> float:
    """The `blur` measure of an aligned crop: the Laplacian variance of its centre (quality-band
    calibration in training/bands.py measures its degraded crops with this same function)."""
    return _laplacian_variance(_centre(crop))


def assess(face: Face, crop: np.ndarray, settings: QualitySettings) -> Quality:
    centre = _centre(crop)  # once per frame: the blur and the brightness both read it
    size, blur = face_size(face), _laplacian_variance(centre)
    brightness, yaw = float(centre.mean()), yaw_proxy(face)
    reasons = []
    if size < settings.min_face_px:
        reasons.append(f"face too small ({size:.0f} px < {settings.min_face_px})")
    if blur < settings.min_blur:
        reasons.append(f"too blurred ({blur:.1f} < {settings.min_blur})")
    if brightness < settings.min_brightness:
        reasons.append(f"too dark ({brightness:.0f} < {settings.min_brightness:.0f})")
    if brightness > settings.max_brightness:
        reasons.append(f"too bright ({brightness:.0f} > {settings.max_brightness:.0f})")
    if yaw > settings.max_yaw:
        reasons.append(f"head turned ({yaw:.2f} > {settings.max_yaw})")
    return Quality(size, blur, brightness, yaw, tuple(reasons))


def frontal_rank(face: Face) -> float:
    """Larger and more frontal faces rank higher; used to pick one face of several."""
    return face_size(face) * (1.0 - min(yaw_proxy(face), 0.9))
