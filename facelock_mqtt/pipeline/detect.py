"""Face detection: YuNet (default bundle) and SCRFD (insightface packs), both via onnxruntime.

Both return boxes, five landmarks (image-left eye first, as the ArcFace template expects) and
scores in the coordinates of the frame they were given.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from ..errors import BundleError
from ..models.bundle import Bundle, InputSpec

STRIDES = (8, 16, 32)
NMS_IOU = 0.4
# A photo more than LARGE_RATIO times detect_size (12000 px vs 640) would shrink a face of a
# normal size below what the detector finds. Such a photo is searched in tiles of a copy scaled
# to WORK_RATIO x detect_size, then each face is detected again in a full-resolution crop
# CROP_RATIO times its size, for landmarks as precise as in a photo of normal size.
LARGE_RATIO = 8
WORK_RATIO = 4
CROP_RATIO = 2.5


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # [x, y, w, h], float32, frame pixels
    landmarks: np.ndarray  # (5, 2) float32
    score: float

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])


class Detector(Protocol):
    def detect(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> list[Face]: ...


def _letterbox_scale(height: int, width: int, size: int) -> tuple[float, int, int]:
    """Scale so the longest side is `size`; pad to multiples of 32 (the largest stride)."""
    scale = size / max(height, width)
    pad_h = int(np.ceil(height * scale / 32) * 32)
    pad_w = int(np.ceil(width * scale / 32) * 32)
    return scale, pad_h, pad_w


def _to_tensor(image: np.ndarray, spec: InputSpec, size: int) -> tuple[np.ndarray, float]:
    height, width = image.shape[:2]
    scale, pad_h, pad_w = _letterbox_scale(height, width, size)
    new_w, new_h = round(width * scale), round(height * scale)
    if (new_w, new_h) != (width, height):  # resizing to the same size would only copy
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    planes = image.transpose(2, 0, 1)
    if spec.color == "rgb":
        planes = planes[::-1]
    # Cast straight into the padded tensor and normalise in place: building a padded uint8
    # canvas first and normalising into fresh arrays took a third of a 640x480 detection.
    padded = (new_h, new_w) != (pad_h, pad_w)
    tensor = (np.zeros if padded else np.empty)((1, 3, pad_h, pad_w), np.float32)
    tensor[0, :, :new_h, :new_w] = planes
    if spec.mean:
        tensor -= spec.mean
    if spec.std != 1.0:
        tensor /= spec.std
    return tensor, scale


def _nms(boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, min_score: float) -> list[Face]:
    keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), min_score, NMS_IOU)
    order = sorted(np.asarray(keep, dtype=int).reshape(-1), key=lambda i: -scores[i])
    return [Face(boxes[i].astype(np.float32), landmarks[i].astype(np.float32), float(scores[i])) for i in order]


def _stack(parts: list[tuple]) -> tuple:
    """One (boxes, scores, landmarks) from several."""
    return tuple(np.concatenate(group) for group in zip(*parts, strict=True))


@functools.lru_cache(maxsize=64)
def _grid(height: int, width: int, stride: int, anchors: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell column and row of each output (read-only: one copy serves every frame of a size)."""
    rows, cols = np.mgrid[0 : height // stride, 0 : width // stride]
    cols = np.repeat(cols.reshape(-1), anchors).astype(np.float32)
    rows = np.repeat(rows.reshape(-1), anchors).astype(np.float32)
    cols.flags.writeable = rows.flags.writeable = False
    return cols, rows


class _OnnxDetector:
    def __init__(self, bundle: Bundle, threads: int, size: int, min_score: float) -> None:
        spec = bundle.manifest.detector
        self.spec = spec.input
        self.session = bundle.session(spec.file, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.size = size
        self.min_score = min_score

    def detect(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> list[Face]:
        """Faces in `image`, or only inside `region` (x, y, w, h) when given, best first."""
        offset = np.zeros(2, np.float32)
        if region is not None:
            x, y, w, h = region
            image = image[y : y + h, x : x + w]
            offset[:] = (x, y)
        if image.size == 0:
            return []
        if max(image.shape[:2]) > LARGE_RATIO * self.size:
            faces = self._detect_large(image)
        else:
            faces = _nms(*self._raw(image), self.min_score)
        if not offset.any():
            return faces
        return [Face(f.box + np.r_[offset, 0, 0].astype(np.float32), f.landmarks + offset, f.score) for f in faces]

    def _raw(self, image: np.ndarray, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0) -> tuple:
        """Boxes, scores and landmarks before NMS, in the coordinates of the image `image` was cut
        from at `origin` and then scaled by `scale`."""
        # Never upscale a small crop past its own size: it only adds cost.
        size = min(self.size, max(image.shape[:2]) + 31)
        tensor, tensor_scale = _to_tensor(image, self.spec, size)
        outputs = self.session.run(None, {self.input_name: tensor})
        boxes, scores, landmarks = self._decode(outputs, tensor.shape[2], tensor.shape[3])
        boxes /= tensor_scale * scale
        landmarks /= tensor_scale * scale
        boxes[:, :2] += origin
        landmarks += origin
        return boxes, scores, landmarks

    def _detect_large(self, image: np.ndarray) -> list[Face]:
        """Tiles of a downscaled copy (and the whole copy, for a face that fills the photo), then
        every face found once more in a full-resolution crop around it."""
        scale = WORK_RATIO * self.size / max(image.shape[:2])
        work = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = [self._raw(work, scale=scale)]
        tile, step = self.size, self.size * 3 // 4  # overlapping: a face on a seam is whole in a neighbour
        for y in range(0, max(work.shape[0] - tile, 0) + step, step):
            for x in range(0, max(work.shape[1] - tile, 0) + step, step):
                found.append(self._raw(work[y : y + tile, x : x + tile], (x / scale, y / scale), scale))
        faces = _nms(*_stack(found), self.min_score)
        if not faces:
            return []
        return _nms(*_stack([self._refine(image, face) for face in faces]), self.min_score)

    def _refine(self, image: np.ndarray, face: Face) -> tuple:
        """The face detected again in a full-resolution crop around it; as found when it is not."""
        x, y, w, h = face.box
        half = CROP_RATIO * max(w, h) / 2
        x0, y0 = int(max(x + w / 2 - half, 0)), int(max(y + h / 2 - half, 0))
        crop = image[y0 : int(y + h / 2 + half), x0 : int(x + w / 2 + half)]
        boxes, scores, landmarks = self._raw(crop, (x0, y0))
        inside = [i for i, (cx, cy) in enumerate(boxes[:, :2] + boxes[:, 2:] / 2) if x < cx < x + w and y < cy < y + h]
        if not inside:
            return face.box[None], np.array([face.score], np.float32), face.landmarks[None]
        best = max(inside, key=lambda i: scores[i])
        return boxes[best : best + 1], scores[best : best + 1], landmarks[best : best + 1]

    def _decode(self, outputs: list[np.ndarray], height: int, width: int) -> tuple[np.ndarray, ...]:
        raise NotImplementedError


class YuNetDetector(_OnnxDetector):
    """Outputs per stride: cls, obj, bbox (dx, dy, log w, log h), kps; anchor-free grid."""

    def _decode(self, outputs: list[np.ndarray], height: int, width: int) -> tuple[np.ndarray, ...]:
        all_boxes, all_scores, all_kps = [], [], []
        for i, stride in enumerate(STRIDES):
            cls, obj = outputs[i][0, :, 0], outputs[i + 3][0, :, 0]
            bbox, kps = outputs[i + 6][0], outputs[i + 9][0]
            scores = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            keep = scores >= self.min_score
            cols, rows = _grid(height, width, stride, 1)
            cols, rows, bbox, kps = cols[keep], rows[keep], bbox[keep], kps[keep]
            cx, cy = (cols + bbox[:, 0]) * stride, (rows + bbox[:, 1]) * stride
            w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            all_boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
            points = kps.reshape(-1, 5, 2)
            all_kps.append(np.stack([(points[..., 0] + cols[:, None]), (points[..., 1] + rows[:, None])], -1) * stride)
            all_scores.append(scores[keep])
        return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_kps)


class SCRFDDetector(_OnnxDetector):
    """Outputs: scores, distances (l, t, r, b) and keypoint offsets per stride, 2 anchors a cell."""

    ANCHORS = 2

    def _decode(self, outputs: list[np.ndarray], height: int, width: int) -> tuple[np.ndarray, ...]:
        all_boxes, all_scores, all_kps = [], [], []
        for i, stride in enumerate(STRIDES):
            scores = outputs[i].reshape(-1)
            keep = scores >= self.min_score
            cols, rows = _grid(height, width, stride, self.ANCHORS)
            cx, cy = cols[keep] * stride, rows[keep] * stride
            dist = outputs[i + 3].reshape(-1, 4)[keep] * stride
            x1, y1, x2, y2 = cx - dist[:, 0], cy - dist[:, 1], cx + dist[:, 2], cy + dist[:, 3]
            all_boxes.append(np.stack([x1, y1, x2 - x1, y2 - y1], axis=1))
            kps = outputs[i + 6].reshape(-1, 5, 2)[keep] * stride
            all_kps.append(kps + np.stack([cx, cy], axis=1)[:, None, :])
            all_scores.append(scores[keep])
        return np.concatenate(all_boxes), np.concatenate(all_scores), np.concatenate(all_kps)


def load_detector(bundle: Bundle, threads: int, size: int, min_score: float) -> Detector:
    kinds = {"yunet": YuNetDetector, "scrfd": SCRFDDetector}
    kind = bundle.manifest.detector.kind
    if kind not in kinds:
        raise BundleError(f"unknown detector kind {kind!r}")
    return kinds[kind](bundle, threads, size, min_score)
