"""Training configuration: one closed pydantic model per step, loaded from a JSON (or YAML) file.

Each step receives only its own section. A typo in a key is an error, never ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facelock_mqtt.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Section):
    path: Path = Field(..., description="Folder of <identity>/<image> files.")
    name: str | None = Field(None, description="Source name recorded per image; default: the folder name.")
    aligned: bool = Field(False, description="Images are already ArcFace-aligned 112x112 crops: skip detection.")
    min_images: int = Field(1, ge=1, description="Skip identities with fewer images than this.")
    max_identities: int | None = Field(None, ge=1, description="Keep at most this many identities (sorted by name).")
    exclude: list[str] = Field(default_factory=list, description="Folders that are not identities (e.g. deepface's scenes).")


class IngestConfig(Section):
    sources: list[SourceConfig] = Field(..., min_length=1, description="Image folders to ingest.")
    near_duplicate_bits: int = Field(
        3, ge=0, le=16, description="dHash Hamming distance at or below which two crops of one identity are near duplicates."
    )
    low_light_brightness: float = Field(70.0, ge=0, le=255, description="Mean grey below which a crop is tagged low_light.")
    blurry_below: float = Field(40.0, ge=0, description="Laplacian variance below which a crop is tagged blurry.")
    min_low_light_fraction: float = Field(0.05, ge=0, le=1, description="Warn when fewer crops than this are low-light.")


class SplitConfig(Section):
    seed: int = Field(0, description="Seed of the identity shuffle.")
    dedupe_cosine: float | None = Field(
        0.6, ge=0, le=1, description="Merge identities of different sources whose mean served-model embeddings agree "
        "at this cosine or more (one person under two names); None: no dedupe."
    )
    ratios: tuple[float, float, float] | None = Field(
        None, description="train/val/test fractions of identities; default from the dataset size."
    )
    holdout_sources: list[str] = Field(
        default_factory=list, description="Sources whose identities all go to the test split (e.g. yale for lighting analysis)."
    )
    eval_sources: list[str] = Field(
        default_factory=list,
        description="Sources never trained on, their identities shared between val and test: the calibration then "
        "sees their impostors too (e.g. grayscale, side-lit faces).",
    )

    @model_validator(mode="after")
    def _ratios_sum(self) -> SplitConfig:
        if self.ratios is not None and (abs(sum(self.ratios) - 1.0) > 1e-6 or min(self.ratios) < 0):
            raise ValueError("split ratios must be non-negative and sum to 1")
        return self


class ModelConfig(Section):
    arch: Literal["mobilefacenet", "sface"] = Field(
        "mobilefacenet", description="'mobilefacenet': trained from scratch; 'sface': the served SFace embedder, imported to fine-tune."
    )
    pretrained: Path | None = Field(
        None, description="SFace ONNX file to import (arch 'sface'); default: the embedder of facelock's default bundle."
    )
    freeze_convs: int = Field(0, ge=0, le=64, description="Conv blocks (input side first) kept frozen while fine-tuning.")
    freeze_bn: bool = Field(
        False, description="Keep every BatchNorm's statistics as imported (small fine-tuning batches estimate them badly)."
    )
    width: float = Field(1.0, gt=0.1, le=4.0, description="Channel multiplier of MobileFaceNet.")
    blocks: tuple[int, int, int, int, int] = Field((5, 1, 6, 1, 2), description="Bottleneck repeats per stage.")
    embedding_size: int = Field(128, ge=16, le=1024, description="Embedding dimension.")
    init_from: Path | None = Field(None, description="Checkpoint whose backbone weights start the run.")


class HeadConfig(Section):
    kind: Literal["arcface", "cosface"] = Field("arcface", description="Margin: additive angle (ArcFace) or cosine (CosFace).")
    init: Literal["random", "class_mean"] = Field(
        "random", description="Class centres start random, or at each class's mean embedding (fine-tuning a pretrained backbone)."
    )
    s: float = Field(64.0, gt=0, le=128, description="ArcFace logit scale.")
    m: float = Field(0.5, ge=0, lt=1.5, description="Margin: radians (ArcFace) or cosine (CosFace).")


class OverfitConfig(Section):
    images: int = Field(8, ge=2, le=256, description="Images in the overfit set.")
    identities: int = Field(4, ge=2, le=64, description="Identities they come from.")
    max_steps: int = Field(300, ge=10, le=10000, description="Steps allowed to reach the target loss.")
    target_loss: float = Field(0.05, gt=0, description="Loss that counts as 'near zero'.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the check.")


class TrainConfig(Section):
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(128, ge=2, le=4096, description="Batch per process.")
    lr: float = Field(0.1, gt=0, le=10, description="Peak SGD learning rate (scaled by world size).")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=0.1)
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up before the polynomial decay.")
    clip_grad: float = Field(5.0, gt=0, description="Gradient norm clip.")
    val_far: float = Field(1e-3, gt=0, lt=1, description="FAR at which validation TAR drives early stopping.")
    patience: int = Field(3, ge=1, description="Epochs without a better validation TAR before stopping.")
    workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes.")
    amp: Literal["auto", "off"] = Field("auto", description="Mixed precision on a GPU ('auto') or never.")
    threads: int = Field(0, ge=0, le=256, description="CPU threads per process (0: torch's default).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (smoke runs).")
    max_minutes: float | None = Field(None, gt=0, description="Time box: stop after the epoch step that crosses it.")
    anchor: float = Field(
        0.0, ge=0, description="Weight of 1 - cosine(embedding of the augmented crop, served model's embedding of the "
        "clean crop): invariance to door conditions without moving the clean geometry low-FAR thresholds rest on."
    )
    overfit: OverfitConfig = OverfitConfig()


class DistillConfig(Section):
    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(64, ge=2, le=4096)
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0)
    flip: bool = Field(True, description="Also learn the teacher's embedding of each mirrored crop.")
    lfw: Path | None = Field(None, description="lfw_aligned_112 folder (with pairs.txt) for the accuracy report.")
    heldout_folds: list[int] = Field(
        default_factory=lambda: [5, 6, 7, 8, 9],
        min_length=2,
        description="pairs.txt folds (0-9) whose identities are never distilled on and whose pairs are reported.",
    )


    @model_validator(mode="after")
    def _folds(self) -> DistillConfig:
        if any(not 0 <= f <= 9 for f in self.heldout_folds) or len(set(self.heldout_folds)) != len(self.heldout_folds):
            raise ValueError("heldout_folds must be distinct pairs.txt folds 0-9 (at least two: thresholds are cross-validated)")
        return self


class AugmentConfig(Section):
    """Door-condition augmentation (training/augment.py): a probability per degradation, 0 = off."""

    grey: float = Field(0.0, ge=0, le=1, description="Grey / IR look.")
    low_light: float = Field(0.0, ge=0, le=1, description="Darkening gamma plus sensor noise.")
    low_res: float = Field(0.0, ge=0, le=1, description="Down to a small face and back up.")
    low_res_face_px: tuple[float, float] = Field(
        (24.0, 40.0), description="Face size range (eye distance x 2.5, as the quality gate measures) of low_res."
    )
    motion_blur: float = Field(0.0, ge=0, le=1, description="Line-kernel blur at a random angle.")
    jpeg: float = Field(0.0, ge=0, le=1, description="Low-quality JPEG artefacts.")
    rotate: float = Field(0.0, ge=0, le=1, description="Small rotation after alignment.")
    rotate_deg: float = Field(10.0, ge=0, le=45, description="Largest rotation, degrees.")


class SweepConfig(Section):
    mode: Literal["random", "grid"] = "random"
    trials: int = Field(4, ge=1, le=1000, description="Most trials run (budget).")
    epochs: int = Field(3, ge=1, description="Epochs per trial.")
    max_steps: int | None = Field(None, ge=1, description="Steps per trial (smoke runs).")
    seed: int = 0
    lr: list[float] = Field(default_factory=lambda: [0.05, 0.1])
    margin: list[float] = Field(default_factory=lambda: [0.3, 0.5])
    weight_decay: list[float] = Field(default_factory=lambda: [1e-4, 5e-4])
    embedding_size: list[int] = Field(default_factory=lambda: [128])


class EvaluateConfig(Section):
    fars: list[float] = Field(default_factory=lambda: [1e-3, 1e-4, 1e-5, 1e-6])
    worst: int = Field(8, ge=0, le=100, description="Worst false accepts and rejects listed.")
    max_images: int = Field(6000, ge=10, le=20000, description="Cap on test images (all pairs grow quadratically).")


class GateConfig(Section):
    target_far: float = Field(1e-4, gt=0, lt=1, description="FAR the served threshold is calibrated for.")
    min_tar: float = Field(0.9, ge=0, le=1, description="Least test TAR at the target FAR for a bundle to be written.")
    fars: list[float] = Field(default_factory=lambda: [1e-3, 1e-4, 1e-5, 1e-6], description="FARs calibrated into the bundle.")
    max_far_ratio: float = Field(
        1.0, gt=0, le=1.0, description="Refuse when the test FAR at the val-calibrated threshold exceeds target x this; "
        "at most 1: the served threshold must hold its FAR on new people, not 3-5x it."
    )
    compare_far: float = Field(1e-6, gt=0, lt=1, description="FAR of the all-pairs TAR that `compare` holds against the default.")
    max_tar_drop: float = Field(
        0.003, ge=0, le=1, description="Largest TAR loss at compare_far, versus the default, that `compare` accepts (0.003 = 0.3 points)."
    )


class ExportConfig(Section):
    opset: int = Field(
        18, ge=18, le=21, description="ONNX opset of the embedder; the torch.export-based exporter writes 18 or later."
    )
    parity_images: int = Field(64, ge=1, description="Real crops compared between PyTorch and ONNX Runtime.")
    min_cosine: float = Field(0.9999, gt=0, le=1, description="Least PyTorch/ONNX cosine on every crop.")
    name: str = Field("facelock-mobilefacenet", description="Bundle name in the manifest.")


class RunConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$", description="Run name; outputs go to runs/<name>/.")
    seed: int = 0
    ingest: IngestConfig
    split: SplitConfig = SplitConfig()
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    distill: DistillConfig = DistillConfig()
    sweep: SweepConfig = SweepConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()


def _read(path: Path) -> dict:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use JSON") from exc
        return yaml.safe_load(text)
    return json.loads(text)


def load_config(path: Path | str) -> RunConfig:
    """Read and validate a run config; raise ConfigError naming every wrong key."""
    path = Path(path)
    try:
        raw = _read(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read training config {path}: {exc}") from exc
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid training config {path}: {problems}") from exc
