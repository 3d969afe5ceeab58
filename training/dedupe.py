"""One person, one identity: merge identities of different sources that are the same person.

Sources name people independently (deepface's `person01` is LFW's `Angelina_Jolie`); split by
name, such a person lands in train under one name and in test under the other, and the test
then measures memory, not recognition. Before splitting, each identity's mean served-model
embedding is compared with every identity of the other sources; pairs above `min_cosine` are
merged (union-find, so chains merge too) under the identity with most images.

Embeddings come from the served default model through onnxruntime, cached in the dataset folder
(`served_embeddings.npz`, keyed by the crop list), with a progress line.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelock_mqtt.pipeline.embed import Embedder

from .dataset import DatasetManifest, Record, load_crops
from .progress import Progress

log = logging.getLogger(__name__)

EMBEDDINGS = "served_embeddings.npz"


def embed_with_progress(embedder: Embedder, crops: np.ndarray, label: str, chunk: int = 64) -> np.ndarray:
    """`embedder.embed` in chunks, with a progress line (thousands of crops take minutes)."""
    bar = Progress((len(crops) + chunk - 1) // chunk, label)
    parts = []
    for start in range(0, len(crops), chunk):
        parts.append(embedder.embed(list(crops[start : start + chunk])))
        bar.update(len(parts[-1]))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros((0, embedder.size), np.float32)


def served_embeddings(embedder: Embedder, folder: Path, records: list[Record]) -> np.ndarray:
    """The served model's embedding of every record's crop, cached by the list of crops."""
    cache = Path(folder) / EMBEDDINGS
    key = hashlib.sha256("\n".join(r.crop for r in records).encode()).hexdigest()
    if cache.is_file():
        data = np.load(cache)
        if str(data["key"]) == key:
            return data["embeddings"]
    vectors = embed_with_progress(embedder, load_crops(folder, records), "served-model embeddings")
    np.savez(cache, key=key, embeddings=vectors, crops=np.array([r.crop for r in records]))
    return vectors


def cached_served_embeddings(folder: Path, records: list[Record]) -> np.ndarray | None:
    """The served model's embeddings of `records` from the dedupe cache, or None if any is missing."""
    cache = Path(folder) / EMBEDDINGS
    if not cache.is_file():
        return None
    data = np.load(cache)
    if "crops" not in data:
        return None
    row = {crop: i for i, crop in enumerate(data["crops"].tolist())}
    if any(r.crop not in row for r in records):
        return None
    return data["embeddings"][[row[r.crop] for r in records]]


@dataclass(frozen=True)
class Duplicate:
    a: str
    b: str
    cosine: float


def identity_means(records: list[Record], embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
    names = sorted({r.identity for r in records})
    index = {n: i for i, n in enumerate(names)}
    sums = np.zeros((len(names), embeddings.shape[1]), np.float64)
    np.add.at(sums, [index[r.identity] for r in records], embeddings)
    return names, (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)


def find_duplicates(records: list[Record], embeddings: np.ndarray, min_cosine: float) -> list[Duplicate]:
    """Identity pairs from different sources whose mean embeddings agree at `min_cosine` or more."""
    source_of = {r.identity: r.source for r in records}
    names, means = identity_means(records, embeddings)
    sources = np.array([source_of[n] for n in names])
    scores = means @ means.T
    i, j = np.nonzero(np.triu(scores >= min_cosine, k=1) & (sources[:, None] != sources[None, :]))
    return [Duplicate(names[a], names[b], float(scores[a, b])) for a, b in zip(i, j, strict=True)]


def merge_map(records: list[Record], duplicates: list[Duplicate]) -> dict[str, str]:
    """identity -> the identity it merges into (the group member with most images, then by name)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for d in duplicates:
        parent[root(d.a)] = root(d.b)
    groups: dict[str, list[str]] = {}
    for name in {n for d in duplicates for n in (d.a, d.b)}:
        groups.setdefault(root(name), []).append(name)
    counts = Counter(r.identity for r in records)
    mapping = {}
    for members in groups.values():
        keep = min(members, key=lambda n: (-counts[n], n))
        mapping |= {m: keep for m in members if m != keep}
    return mapping


def dedupe(manifest: DatasetManifest, embeddings: np.ndarray, min_cosine: float) -> tuple[DatasetManifest, list[Duplicate]]:
    """The manifest with cross-source duplicates merged, and the duplicates found."""
    duplicates = find_duplicates(manifest.records, embeddings, min_cosine)
    mapping = merge_map(manifest.records, duplicates)
    for d in duplicates:
        log.info("same person in two sources: %s = %s (mean-embedding cosine %.3f)", d.a, d.b, d.cosine)
    records = [r.model_copy(update={"identity": mapping.get(r.identity, r.identity)}) for r in manifest.records]
    return manifest.model_copy(update={"records": records, "merged": manifest.merged | mapping}), duplicates
