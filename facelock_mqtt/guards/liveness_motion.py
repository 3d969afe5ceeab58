"""The temporal liveness cue: does the face move in front of its surroundings, or with them?

A held photo moves as one plane: the similarity map that carries its five landmarks from one
frame to the next also carries the photo's margin, the hands and the printed background around
the face. A live head moves in front of a background that stays put. For each pair of
consecutive frames, the ring around the face (1.2 to 2 face boxes) in the later frame is
compared, by normalised cross-correlation, with the earlier frame moved by the face's map and
with the earlier frame left in place; the difference is the *surround lift*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from ..errors import ImageError
from ..pipeline.align import similarity_transform

# The ring is near enough to the face to lie on a held photo; a light blur absorbs landmark jitter.
RING_INNER, RING_OUTER, RING_BLUR = 1.2, 2.0, 1.0
MIN_RING_PIXELS = 500
MIN_PAIRS = 2  # moving frame pairs the temporal cue needs before it may vote


class FaceLike(Protocol):
    box: np.ndarray  # [x, y, w, h]
    landmarks: np.ndarray  # (5, 2)


def landmark_motion(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """How far five landmarks moved from `a` to `b` (RMS, in eye distances), and the similarity
    map that carries them: for a held print, it carries the whole photo along with the face."""
    eyes = (float(np.linalg.norm(a[1] - a[0])), float(np.linalg.norm(b[1] - b[0])))
    if not min(eyes) >= 1.0:
        raise ImageError("landmarks are degenerate (eyes less than a pixel apart)")
    motion = np.sqrt(((b - a) ** 2).sum(axis=1).mean()) / np.mean(eyes)
    # 4 degrees of freedom from 10 coordinates: steadier under landmark jitter than an affine fit.
    return float(motion), similarity_transform(a, b).astype(np.float64)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def surround_lift(image0: np.ndarray, image1: np.ndarray, box1: np.ndarray, transform: np.ndarray) -> float | None:
    """How much better the face's surroundings in frame 1 are explained by moving frame 0 with
    the face (NCC after the landmarks' similarity map) than by leaving it still (NCC in place).

    The margin, hands and printed background of a held photo move with the face: a positive lift.
    A live head moves in front of a still background: a negative one. None when too little of
    the ring around the face is visible in both frames.
    """
    height, width = image1.shape[:2]
    x, y, w, h = (float(v) for v in box1)
    cx, cy = x + w / 2, y + h / 2
    left, top = int(max(cx - w * RING_OUTER / 2, 0)), int(max(cy - h * RING_OUTER / 2, 0))
    right, bottom = int(min(cx + w * RING_OUTER / 2, width)), int(min(cy + h * RING_OUTER / 2, height))
    if right - left < 8 or bottom - top < 8:
        return None
    size = (right - left, bottom - top)
    # The face's map, expressed in the coordinates of the ring's bounding rectangle.
    shifted = transform - np.array([[0, 0, left], [0, 0, top]], dtype=np.float64)
    moved = cv2.warpAffine(_grey(image0), shifted, size, borderValue=-1.0)
    still = _grey(image0[top:bottom, left:right])
    now = _grey(image1[top:bottom, left:right])
    mask = moved >= 0
    inner_w, inner_h = w * RING_INNER, h * RING_INNER
    ix0, iy0 = int(max(cx - inner_w / 2 - left, 0)), int(max(cy - inner_h / 2 - top, 0))
    mask[iy0 : int(cy + inner_h / 2 - top), ix0 : int(cx + inner_w / 2 - left)] = False
    if mask.sum() < MIN_RING_PIXELS:
        return None
    blur = [cv2.GaussianBlur(im, (0, 0), RING_BLUR)[mask] for im in (now, moved, still)]
    return _ncc(blur[0], blur[1]) - _ncc(blur[0], blur[2])


def pair_evidence(frame0: tuple[np.ndarray, FaceLike], frame1: tuple[np.ndarray, FaceLike]) -> tuple[float, float | None]:
    """(landmark motion, surround lift) between two consecutive frames of an attempt."""
    (image0, face0), (image1, face1) = frame0, frame1
    a, b = (np.asarray(f.landmarks, dtype=np.float64).reshape(5, 2) for f in (face0, face1))
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ImageError("landmarks contain non-finite values")
    motion, transform = landmark_motion(a, b)
    if image0.shape != image1.shape:
        return motion, None  # a resolution change mid-attempt: no evidence either way
    return motion, surround_lift(image0, image1, np.asarray(face1.box), transform)


def temporal_from_pairs(
    pairs: Sequence[tuple[float, float | None]], min_motion: float, rigid_lift: float
) -> float | None:
    """Share of moving frame pairs whose surroundings did NOT move with the face (live-like).

    None with fewer than MIN_PAIRS pairs that moved at least `min_motion` eye distances: a still
    face is no evidence, and a single pair is too little to veto the CNN (measured: one pair of a
    real NUAA live session read as a print, turning the person away).
    """
    evidence = [lift < rigid_lift for motion, lift in pairs if motion >= min_motion and lift is not None]
    return float(np.mean(evidence)) if len(evidence) >= MIN_PAIRS else None


# --- evidence of life: did the face itself move? -------------------------------------------------
#
# A still picture fed as a stream (repeated with fresh noise, something moving beside it to open
# the motion gate) shows a face whose pixels never move; a live face always does a little (head
# sway, breathing, blinks). YuNet's landmarks are too coarse to see it: on a repeated still they
# jump between two solutions up to 0.14 eye distances apart (measured on NUAA frames), more than a
# live face moves in a tenth of a second. Dense optical flow over the face sees it move by 0.4 %
# of its width (half a pixel; training/liveness_life.py measures floor and sensitivity).
LIFE_WIDTH = 112  # the face region is resized to this width: motion comes out in face widths
# Blur against pixel noise (JPEG, sensor) before the flow, in pixels of the resized face and never
# less than this many of the camera's own (a small face is enlarged, its noise with it); a shift
# survives a blur. Measured: on 45 px faces it halves the noise floor and sees small shifts better.
LIFE_BLUR = 1.5
LIFE_LOCAL = 4.0  # window (pixels of the resized face) of the local contrast normalisation
LIFE_FAR = 0.25  # landmarks this many face widths from the first frame's: the face left its region


def _life_patch(image: np.ndarray, region: tuple[int, int, int, int], size: tuple[int, int], blur: float) -> np.ndarray:
    left, top, right, bottom = region
    patch = cv2.resize(_grey(image[top:bottom, left:right]), size, interpolation=cv2.INTER_AREA)
    patch = cv2.GaussianBlur(patch, (0, 0), blur)
    # Local contrast normalisation: an exposure step or a flicker changes brightness and contrast,
    # not where the edges are (measured: a x1.1 step read as motion on 1 of 17 faces without it).
    detail = patch - cv2.GaussianBlur(patch, (0, 0), LIFE_LOCAL)
    detail /= np.sqrt(cv2.GaussianBlur(detail * detail, (0, 0), LIFE_LOCAL) + 4.0)
    return np.ascontiguousarray(np.clip(128.0 + 40.0 * detail, 0, 255).astype(np.uint8))


def _face_region(box: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    height, width = shape[:2]
    x, y, w, h = (float(v) for v in box)
    region = (int(max(x, 0)), int(max(y, 0)), int(min(x + w, width)), int(min(y + h, height)))
    if region[2] - region[0] < 8 or region[3] - region[1] < 8:
        raise ImageError(f"face box {np.round(box, 1).tolist()} leaves too little of the face in the frame")
    return region


def face_motion(frames: Sequence[tuple[np.ndarray, FaceLike]], shift: LifeShift | None = None) -> float | None:
    """How far the face itself moved during the attempt, in face widths: the largest shift, over
    the later frames, of the first frame's face region (`life_shift`; `shift` may be a memo of it).

    None when fewer than two frames of one resolution can be compared: no evidence of life.
    """
    if len(frames) < 2:
        return None
    shift = shift or life_shift
    motions = [m for frame in frames[1:] if (m := shift(frames[0], frame)) is not None]
    return max(motions) if motions else None


class LifeShift(Protocol):
    def __call__(self, first: tuple[np.ndarray, FaceLike], frame: tuple[np.ndarray, FaceLike]) -> float | None: ...


def life_shift(first: tuple[np.ndarray, FaceLike], frame: tuple[np.ndarray, FaceLike]) -> float | None:
    """How far the first frame's face region moved by `frame`, in face widths: the median
    dense-flow vector (so a hand or a rectangle over part of the face does not count, and
    incoherent pixel noise cancels out). None for a resolution change mid-attempt (nothing to
    compare); ImageError when the first frame's box leaves too little of the face.
    """
    (image0, face0), (image, face) = first, frame
    region = _face_region(np.asarray(face0.box), image0.shape)
    if image.shape != image0.shape:
        return None
    scale = LIFE_WIDTH / (region[2] - region[0])
    size = (LIFE_WIDTH, max(8, round((region[3] - region[1]) * scale)))
    blur = LIFE_BLUR * max(1.0, scale)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # per call: doors run in threads
    field = flow.calc(_life_patch(image0, region, size, blur), _life_patch(image, region, size, blur), None)
    shift = float(np.hypot(*np.median(field.reshape(-1, 2), axis=0))) / LIFE_WIDTH
    # A face that moved out of the first frame's region leaves the flow nothing to follow; its
    # landmarks (jitter far below LIFE_FAR on a still) then say how far it went.
    start = np.asarray(face0.landmarks, dtype=np.float64).reshape(5, 2)
    landmarks = np.asarray(face.landmarks, dtype=np.float64).reshape(5, 2)
    travel = float(np.sqrt(((landmarks - start) ** 2).sum(axis=1).mean())) * scale / LIFE_WIDTH
    return max(shift, travel) if travel >= LIFE_FAR else shift
