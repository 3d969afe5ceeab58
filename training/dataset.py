"""The dataset manifest (one record per aligned crop) that every step after ingest reads.

Written by `ingest` as `<dataset>/dataset.json` next to `<dataset>/crops/`; `split` adds each
record's split. Crops are 112x112 BGR PNGs (lossless, so re-reading them is exact).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import DatasetError

Split = Literal["train", "val", "test"]
MANIFEST = "dataset.json"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    crop: str = Field(..., description="Crop path relative to the dataset folder.")
    original: str = Field(..., description="The source image the crop came from.")
    identity: str
    source: str
    sha256: str = Field(..., description="SHA-256 of the original file (exact duplicates).")
    dhash: str = Field(..., description="64-bit difference hash of the crop, hex (near duplicates).")
    brightness: float = Field(..., description="Mean grey level of the crop, 0-255.")
    blur: float = Field(..., description="Laplacian variance of the crop; lower is blurrier.")
    face_px: float | None = Field(None, description="Eye-to-mouth-scale face size in the original, px; None if pre-aligned.")
    tags: list[str] = Field(default_factory=list, description="Condition tags (file-name words and measured ones).")
    split: Split | None = None


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int
    ratios: tuple[float, float, float]
    identities: dict[str, int] = Field(..., description="Identities per split.")
    images: dict[str, int] = Field(..., description="Images per split.")
    holdout_sources: list[str] = Field(default_factory=list)
    eval_sources: list[str] = Field(default_factory=list)


class DatasetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    records: list[Record]
    dropped: dict[str, int] = Field(default_factory=dict, description="Images dropped, by reason.")
    split: SplitInfo | None = None
    merged: dict[str, str] = Field(
        default_factory=dict, description="Identities merged into another source's identity of the same person (dedupe)."
    )


def save_manifest(manifest: DatasetManifest, folder: Path) -> Path:
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=1))
    tmp.replace(path)  # a reader never sees half a manifest
    return path


def load_manifest(folder: Path) -> DatasetManifest:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"no dataset manifest at {path}: run `python -m training ingest` first")
    try:
        return DatasetManifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise DatasetError(f"dataset manifest {path} is invalid: {exc}") from exc


def select(manifest: DatasetManifest, split: Split) -> list[Record]:
    if manifest.split is None:
        raise DatasetError("the dataset has no split yet: run `python -m training split` first")
    records = [r for r in manifest.records if r.split == split]
    if not records:
        raise DatasetError(f"the {split} split is empty")
    return records


def read_crop(folder: Path, record: Record) -> np.ndarray:
    crop = cv2.imread(str(Path(folder) / record.crop), cv2.IMREAD_COLOR)
    if crop is None or crop.shape != (112, 112, 3):
        raise DatasetError(f"crop {record.crop} is missing or not 112x112: re-run ingest")
    return crop


def load_crops(folder: Path, records: list[Record]) -> np.ndarray:
    """All crops of `records` as one (N, 112, 112, 3) uint8 BGR array."""
    if not records:
        return np.zeros((0, 112, 112, 3), np.uint8)
    return np.stack([read_crop(folder, r) for r in records])


def labels_of(records: list[Record]) -> tuple[np.ndarray, list[str]]:
    """Integer labels 0..K-1 (identities sorted by name) and the identity names."""
    names = sorted({r.identity for r in records})
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[r.identity] for r in records], np.int64), names


def summary_counts(records: list[Record]) -> dict[str, float]:
    per_identity = Counter(r.identity for r in records)
    return {
        "identities": len(per_identity),
        "images": len(records),
        "mean_per_identity": (len(records) / len(per_identity)) if per_identity else 0.0,
        "with_pairs": sum(1 for n in per_identity.values() if n >= 2),
    }
