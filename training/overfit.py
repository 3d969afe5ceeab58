"""The overfit check: a correct model, loss and data path memorise a handful of images.

If the loss does not fall near zero within a bounded number of steps, something is broken
(labels misaligned with images, a wrong normalisation, a loss bug) and a long run would be wasted.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import HeadConfig, ModelConfig, OverfitConfig

from .dataset import DatasetManifest, Record, labels_of, select
from .distributed import DistEnv
from .errors import DatasetError, OverfitFailed
from .loop import CropDataset, Loop, LoopConfig, seed_everything
from .model import ArcFaceHead, ArcFaceTrainee, build

CPU = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverfitResult:
    passed: bool
    steps: int
    first_loss: float
    final_loss: float
    images: int

    @property
    def message(self) -> str:
        if self.passed:
            return f"overfit check passed: loss {self.first_loss:.3f} -> {self.final_loss:.4f} in {self.steps} steps on {self.images} images"
        return (
            f"overfit check FAILED: loss {self.first_loss:.3f} -> {self.final_loss:.4f} after {self.steps} steps on "
            f"{self.images} images (target below the configured overfit.target_loss). The model cannot memorise a "
            "handful of images: check that labels match images, the input normalisation and the loss."
        )


def pick_images(records: list[Record], cfg: OverfitConfig, seed: int) -> list[Record]:
    """`cfg.images` crops from `cfg.identities` identities that have several images each."""
    per_identity: dict[str, list[Record]] = {}
    for r in records:
        per_identity.setdefault(r.identity, []).append(r)
    each = max(2, cfg.images // cfg.identities)
    candidates = sorted(i for i, rs in per_identity.items() if len(rs) >= each)
    if len(candidates) < cfg.identities:
        raise DatasetError(f"overfit check needs {cfg.identities} identities with {each}+ train images; found {len(candidates)}")
    chosen = np.random.default_rng(seed).choice(candidates, cfg.identities, replace=False)
    return [r for identity in sorted(chosen) for r in per_identity[identity][:each]]


class ShuffledLabels(Dataset):
    """The real dataset with a fresh random label on every read: a deliberately broken setup."""

    def __init__(self, dataset: CropDataset, classes: int) -> None:
        self.dataset, self.classes = dataset, classes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, _ = self.dataset[i]
        return image, torch.as_tensor(random.randrange(self.classes))


def run_overfit(folder: Path, manifest: DatasetManifest, model_cfg: ModelConfig, head_cfg: HeadConfig,
                cfg: OverfitConfig, seed: int, shuffle_labels: bool = False) -> OverfitResult:  # fmt: skip
    """Train on the handful until the loss is near zero or the step budget is spent.

    Runs the real data path (CropDataset reading the crop files, DataLoader) and the real loop
    (`Loop`: optimizer step, clipping), one batch of all the images per step.
    `shuffle_labels` re-draws the labels on every read: a deliberately broken setup that must fail.
    """
    seed_everything(seed)
    records = pick_images(select(manifest, "train"), cfg, seed)
    labels, names = labels_of(records)
    dataset = CropDataset(folder, records, labels, flip=False)
    trainee = ArcFaceTrainee(build(model_cfg), ArcFaceHead(model_cfg.embedding_size, len(names), head_cfg),
                             freeze_bn=model_cfg.freeze_bn)  # fmt: skip
    settings = LoopConfig(epochs=cfg.max_steps, batch_size=len(records), lr=cfg.lr, weight_decay=0.0, optimizer="adamw",
                          constant_lr=True, progress=False, seed=seed)  # fmt: skip
    loop = Loop(trainee, ShuffledLabels(dataset, len(names)) if shuffle_labels else dataset, settings, CPU, None,
                lambda _: 0.0, {})  # fmt: skip
    first = loss_value = float("nan")
    for step in range(1, cfg.max_steps + 1):
        loss_value = loop.train_epoch()
        first = loss_value if step == 1 else first
        if loss_value < cfg.target_loss:
            # Train-mode BatchNorm can fit a fixed batch through its batch statistics alone;
            # only the eval-mode loss (running statistics, as served) shows real memorisation.
            loss_value = eval_loss(trainee, loop.loader)
            if loss_value < cfg.target_loss:
                return OverfitResult(True, step, first, loss_value, len(records))
    return OverfitResult(False, cfg.max_steps, first, loss_value, len(records))


@torch.no_grad()
def eval_loss(trainee: ArcFaceTrainee, loader: DataLoader) -> float:
    trainee.eval()
    losses = [float(trainee(images, targets)) for images, targets in loader]
    trainee.train()
    return float(np.mean(losses))


def require_overfit(*args, **kwargs) -> OverfitResult:
    """run_overfit, raising OverfitFailed (the CLI's non-zero exit) when it fails."""
    result = run_overfit(*args, **kwargs)
    if not result.passed:
        raise OverfitFailed(result.message)
    log.info(result.message)
    return result
