"""The overfit check: a correct model, loss and data path memorise a handful of images.

If the loss does not fall near zero within a bounded number of steps, something is broken
(labels misaligned with images, a wrong normalisation, a loss bug) and a long run would be wasted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import HeadConfig, ModelConfig, OverfitConfig
from .dataset import DatasetManifest, Record, load_crops, select
from .errors import DatasetError, OverfitFailed
from .model import ArcFaceHead, build, to_tensor

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


def run_overfit(folder: Path, manifest: DatasetManifest, model_cfg: ModelConfig, head_cfg: HeadConfig,
                cfg: OverfitConfig, seed: int, shuffle_labels: bool = False) -> OverfitResult:  # fmt: skip
    """Train on the handful until the loss is near zero or the step budget is spent.

    `shuffle_labels` re-draws the labels each step: a deliberately broken setup that must fail.
    """
    torch.manual_seed(seed)
    records = pick_images(select(manifest, "train"), cfg, seed)
    images = to_tensor(load_crops(folder, records))
    names = sorted({r.identity for r in records})
    labels = torch.tensor([names.index(r.identity) for r in records])
    model, head = build(model_cfg), ArcFaceHead(model_cfg.embedding_size, len(names), head_cfg)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    first = loss_value = float("nan")
    for step in range(1, cfg.max_steps + 1):
        model.train()
        targets = labels[torch.randperm(len(labels), generator=generator)] if shuffle_labels else labels
        loss = head(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        first = loss_value if step == 1 else first
        if loss_value < cfg.target_loss:
            # Train-mode BatchNorm can fit a fixed batch through its batch statistics alone;
            # only the eval-mode loss (running statistics, as served) shows real memorisation.
            model.eval()
            with torch.no_grad():
                loss_value = float(head(model(images), targets))
            if loss_value < cfg.target_loss:
                return OverfitResult(True, step, first, loss_value, len(records))
    return OverfitResult(False, cfg.max_steps, first, loss_value, len(records))


def require_overfit(*args, **kwargs) -> OverfitResult:
    """run_overfit, raising OverfitFailed (the CLI's non-zero exit) when it fails."""
    result = run_overfit(*args, **kwargs)
    if not result.passed:
        raise OverfitFailed(result.message)
    log.info(result.message)
    return result
