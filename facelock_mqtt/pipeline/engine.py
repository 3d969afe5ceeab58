"""The verification engine: detect -> pick one face -> align -> quality -> embed."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

from ..models.bundle import Bundle
from ..settings import ModelSettings, QualitySettings
from .align import align_face
from .batcher import Batcher
from .detect import Face, load_detector
from .embed import Embedder
from .quality import Quality, assess, frontal_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceResult:
    face: Face
    crop: np.ndarray  # aligned 112x112 BGR
    quality: Quality
    embedding: np.ndarray | None  # None when quality failed and embedding was skipped
    n_faces: int  # faces seen in the frame; the pipeline used the best-ranked one


class FaceEngine:
    def __init__(self, bundle: Bundle, model: ModelSettings, quality: QualitySettings) -> None:
        self.bundle = bundle
        self.quality_settings = quality
        self.detector = load_detector(bundle, model.threads, model.detect_size, model.min_detection_score)
        self.embedder = Embedder(bundle, model.threads)  # a caller's own list of crops goes in chunks of 8
        # The doors share this engine, each from its own thread. With model.max_batch > 1, faces
        # they hand over together share one run (pipeline/batcher.py); with 1 (the default: no gain
        # measured on 2 cores) or a graph of fixed batch 1, every door runs its own face, concurrently.
        limit = min(model.max_batch, self.embedder.max_batch)
        self.batcher = Batcher(self.embedder.embed, limit) if limit > 1 else None

    def faces(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> list[Face]:
        return self.detector.detect(image, region)

    def analyze(
        self,
        image: np.ndarray,
        region: tuple[int, int, int, int] | None = None,
        embed_poor: bool = False,
    ) -> FaceResult | None:
        """The largest, most frontal face of the frame, or None when there is none.

        A face failing quality is returned with its reasons and, unless `embed_poor`, no
        embedding: it can never be matched.
        """
        return self.analyze_faces(image, self.faces(image, region), embed_poor)

    def analyze_faces(self, image: np.ndarray, faces: list[Face], embed_poor: bool = False) -> FaceResult | None:
        """`analyze` for faces already detected in `image`."""
        result = self.locate_faces(image, faces)
        if result is None or not (result.quality.ok or embed_poor):
            return result
        return dataclasses.replace(result, embedding=self.embed_one(result.crop))

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        """One face's vector; with other doors' faces waiting, in one run with them."""
        return self.batcher.embed(crop) if self.batcher is not None else self.embedder.embed([crop])[0]

    def locate(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> FaceResult | None:
        """`analyze` stopping before the embedding: what a door in remote mode does itself."""
        return self.locate_faces(image, self.faces(image, region))

    def locate_faces(self, image: np.ndarray, faces: list[Face]) -> FaceResult | None:
        """The best face of `faces`, aligned and quality-checked, without an embedding."""
        if not faces:
            return None
        face = max(faces, key=frontal_rank)
        if len(faces) > 1:
            log.debug("%d faces in frame; using the largest, most frontal (box %s)", len(faces), face.box.round())
        crop = align_face(image, face.landmarks)
        return FaceResult(face, crop, assess(face, crop, self.quality_settings), None, len(faces))

    def embed_aligned(self, crops: list[np.ndarray]) -> np.ndarray:
        return self.embedder.embed(crops)
