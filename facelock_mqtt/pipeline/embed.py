"""Embedding: aligned 112x112 crops -> L2-normalised vectors, batched, via onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import BundleError
from ..models.bundle import Bundle, open_session
from ..models.modelprep import rewrite_prelu

__all__ = ["Embedder", "rewrite_prelu"]  # rewrite_prelu lives with the other graph rewrites


class Embedder:
    def __init__(self, bundle: Bundle, threads: int, max_batch: int = 8) -> None:
        spec = bundle.manifest.embedder
        self.spec = spec.input
        self.size = spec.embedding_size
        model = onnx.load_from_string(bundle.model_bytes(spec.file))
        rewrite_prelu(model)
        self.session = open_session(model.SerializeToString(), threads)
        self.input_name = self.session.get_inputs()[0].name
        batch_dim = self.session.get_inputs()[0].shape[0]
        # A graph with a fixed batch of 1 (most third-party exports) is fed one crop at a time.
        self.max_batch = max_batch if not isinstance(batch_dim, int) else batch_dim

    def _tensor(self, crops: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(crops)  # N x 112 x 112 x 3, BGR
        if self.spec.color == "rgb":
            batch = batch[..., ::-1]
        tensor = batch.transpose(0, 3, 1, 2).astype(np.float32)
        if self.spec.mean or self.spec.std != 1.0:
            tensor = (tensor - self.spec.mean) / self.spec.std
        return np.ascontiguousarray(tensor)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, D) float32 unit vectors for N aligned BGR crops."""
        if not crops:
            return np.zeros((0, self.size), np.float32)
        parts = []
        for start in range(0, len(crops), self.max_batch):
            tensor = self._tensor(crops[start : start + self.max_batch])
            parts.append(self.session.run(None, {self.input_name: tensor})[0])
        vectors = np.concatenate(parts).astype(np.float32).reshape(len(crops), -1)
        if vectors.shape[1] != self.size:
            raise BundleError(f"embedder returned {vectors.shape[1]}-d vectors, manifest says {self.size}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
            raise BundleError("embedder returned a zero or non-finite vector")
        return vectors / norms
