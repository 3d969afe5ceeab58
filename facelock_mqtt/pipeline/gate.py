"""Motion gate: run the face detector only on frames where something moved.

A Frigate-like, non-ML detector on a small grayscale copy of each frame: running-average
background, thresholded difference, dilation, contours above a least area. A change over most
of the frame is taken as lighting (lights switched on, camera exposure, IR cut-over): the
background is re-seeded and no motion is reported. The gate stays open `hold_s` after the last
motion so a person who stops in front of the door is still looked at.

A change that stays put for STILL_S seconds (unchanged from frame to frame) is taken into the
background at once: above all the "ghost" a visitor leaves behind in the running average, which
otherwise kept the gate, and the detector, running for about ten seconds after every visit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError, ImageError
from ..settings import GateSettings

log = logging.getLogger(__name__)

Region = tuple[int, int, int, int]  # x, y, w, h in full-frame pixels
Polygon = Sequence[Sequence[int]]  # [[x, y], ...] in full-frame pixels

# Nearest-neighbour downscaling reads the fewest rows of a frame fresh from the decoder: 61 us
# against 99 us for linear (area: ~1 ms) per 640x480 frame, measured in `facelock bench`'s setup;
# the blur that follows keeps sensor noise (sigma 3 -> under 1 grey level) far below the threshold.
_RESIZE = cv2.INTER_NEAREST
_BLUR = (5, 5)
_DILATE = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_DILATE_ITERATIONS = 2
STILL_S = 2.0  # seconds a changed but unmoving area takes to become background


@dataclass(frozen=True)
class GateResult:
    motion: bool  # moving contours large enough in this frame
    passed: bool  # the frame should go on to the detector
    region: Region | None  # bounding box of the moving contours, full-frame pixels
    changed_fraction: float  # fraction of the unmasked gate image that changed


@dataclass(frozen=True)
class GateStats:
    frames_seen: int = 0
    frames_passed: int = 0
    motion_events: int = 0  # transitions from no motion to motion


class MotionGate:
    """Decides, frame by frame, whether the detector needs to look. One instance per camera."""

    def __init__(self, settings: GateSettings, mask: Sequence[Polygon] = ()) -> None:
        self._frames_seen = 0
        self._frames_passed = 0
        self._motion_events = 0
        self.configure(settings, mask)

    def configure(self, settings: GateSettings, mask: Sequence[Polygon] = ()) -> None:
        """(Re)apply settings and mask; the background is learnt again from the next frame."""
        self._settings = settings
        self._mask_polygons = [_check_polygon(p) for p in mask]
        self._shape: tuple[int, int] | None = None  # full-frame (height, width)
        self._background: np.ndarray | None = None  # float32 gate-sized running average
        self._keep: np.ndarray | None = None  # uint8 255 where motion counts, 0 under the mask
        self._previous: np.ndarray | None = None  # last gate image, for frame-to-frame change
        self._still_since: np.ndarray | None = None  # float32 per pixel: unchanged since (seconds)
        self._moving = False
        self._last_motion: float | None = None

    @property
    def stats(self) -> GateStats:
        return GateStats(self._frames_seen, self._frames_passed, self._motion_events)

    def update(self, frame_bgr: np.ndarray, now: float) -> GateResult:
        """Feed one frame taken at `now` (monotonic seconds); say whether it passes the gate."""
        if frame_bgr.dtype != np.uint8 or frame_bgr.ndim not in (2, 3) or frame_bgr.size == 0:
            raise ImageError("motion gate: expected a non-empty 8-bit grey or BGR image")
        self._frames_seen += 1
        if not self._settings.enabled:
            self._frames_passed += 1
            return GateResult(motion=False, passed=True, region=None, changed_fraction=0.0)
        gray = self._prepare(frame_bgr)
        motion, region, fraction = self._detect(gray, now)
        if motion:
            self._last_motion = now
            self._motion_events += not self._moving
        self._moving = motion
        held = self._last_motion is not None and 0.0 <= now - self._last_motion <= self._settings.hold_s
        passed = motion or held
        self._frames_passed += passed
        return GateResult(motion=motion, passed=passed, region=region, changed_fraction=fraction)

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        """Downscale first (the only full-size operation), then grey and blur the small copy."""
        shape = (frame.shape[0], frame.shape[1])
        if shape != self._shape and self._same_view(shape):
            self._shape = shape  # the camera's gate sub-stream (or back): same gate image, background kept
        elif shape != self._shape:
            self._resize_to(shape)
        gate_h, gate_w = self._keep.shape
        small = cv2.resize(frame, (gate_w, gate_h), interpolation=_RESIZE)
        if small.ndim == 3:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return cv2.GaussianBlur(small, _BLUR, 0)

    def _same_view(self, shape: tuple[int, int]) -> bool:
        """A frame of another size but the aspect ratio of the first (within a pixel of the gate
        image): a camera's low-resolution gate sub-stream, scaled to the same gate image. The mask
        stays in the pixels of the first frame size (the main stream's: pipeline/gate_stream.py)."""
        if self._keep is None:
            return False
        gate_h, gate_w = self._keep.shape
        return abs(shape[1] * gate_h / shape[0] - gate_w) < 1.0

    def _resize_to(self, shape: tuple[int, int]) -> None:
        """A new frame size (first frame, or the camera changed resolution): rebuild the mask."""
        height, width = shape
        gate_h = min(self._settings.height, height)
        gate_w = max(1, round(width * gate_h / height))
        keep = np.full((gate_h, gate_w), 255, np.uint8)
        scale = np.array([gate_w / width, gate_h / height])
        polygons = [np.round(p * scale).astype(np.int32) for p in self._mask_polygons]
        if polygons:
            cv2.fillPoly(keep, polygons, 0)
        self._shape, self._keep, self._background = shape, keep, None
        self._previous, self._still_since = None, np.zeros((gate_h, gate_w), np.float32)

    def _detect(self, gray: np.ndarray, now: float) -> tuple[bool, Region | None, float]:
        if self._background is None:
            self._relearn(gray, now)
            return False, None, 0.0
        diff = cv2.absdiff(gray, cv2.convertScaleAbs(self._background))
        _, moving = cv2.threshold(diff, self._settings.pixel_threshold - 1, 255, cv2.THRESH_BINARY)
        cv2.bitwise_and(moving, self._keep, dst=moving)
        active = cv2.countNonZero(self._keep)
        fraction = cv2.countNonZero(moving) / active if active else 0.0
        if fraction > self._settings.lighting_fraction:
            self._relearn(gray, now)  # lighting: learn the new scene at once
            return False, None, fraction
        self._absorb_still(gray, moving, now)
        cv2.accumulateWeighted(gray, self._background, self._settings.alpha)
        region = self._moving_region(moving) if fraction else None
        return region is not None, region, fraction

    def _relearn(self, gray: np.ndarray, now: float) -> None:
        self._background = gray.astype(np.float32)
        self._previous = gray
        self._still_since.fill(now)

    def _absorb_still(self, gray: np.ndarray, moving: np.ndarray, now: float) -> None:
        """Copy into the background the changed pixels that have not moved for STILL_S."""
        previous, self._previous = self._previous, gray
        if not cv2.countNonZero(moving):  # the usual empty scene: every timer restarts
            self._still_since.fill(now)
            return
        step = cv2.absdiff(gray, previous)
        moved = (step >= self._settings.pixel_threshold) | (moving == 0)
        self._still_since[moved] = now
        settled = (now - self._still_since >= STILL_S) & (moving > 0)
        if settled.any():
            self._background[settled] = gray[settled]

    def _moving_region(self, moving: np.ndarray) -> Region | None:
        """Bounding box, in full-frame pixels, of the contours at least `min_area` large."""
        cv2.dilate(moving, _DILATE, dst=moving, iterations=_DILATE_ITERATIONS)
        contours, _ = cv2.findContours(moving, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        least = self._settings.min_area * moving.size
        boxes = [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= least]
        if not boxes:
            return None
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[0] + b[2] for b in boxes)
        y1 = max(b[1] + b[3] for b in boxes)
        height, width = self._shape
        sx, sy = width / moving.shape[1], height / moving.shape[0]
        fx0, fy0 = int(x0 * sx), int(y0 * sy)
        fx1, fy1 = min(width, int(np.ceil(x1 * sx))), min(height, int(np.ceil(y1 * sy)))
        return fx0, fy0, fx1 - fx0, fy1 - fy0


def _check_polygon(points: Polygon) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 3 or array.shape[1] != 2:
        raise ConfigError(f"motion mask: a polygon needs at least 3 [x, y] points, got {points!r}")
    return array


def expand_region(region: Region, frame_shape: Sequence[int], factor: float) -> Region:
    """Grow `region` about its centre by `factor` (>= 1), clipped to the frame.

    The detector runs inside this box: motion boxes hug the moving part (often only a head or
    a shoulder), so some context around it keeps whole faces in view.
    """
    if factor < 1.0:
        raise ValueError(f"expand_region: factor must be >= 1, got {factor}")
    height, width = frame_shape[0], frame_shape[1]
    x, y, w, h = region
    cx, cy = x + w / 2, y + h / 2
    half_w, half_h = w * factor / 2, h * factor / 2
    x0, y0 = max(0, int(cx - half_w)), max(0, int(cy - half_h))
    x1, y1 = min(width, int(np.ceil(cx + half_w))), min(height, int(np.ceil(cy + half_h)))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)
