"""The training loop shared by `train`, `distill` and `sweep`.

DistributedDataParallel when launched by torchrun, mixed precision on a GPU, a warm-up then
polynomial learning-rate decay, gradient clipping, named-state checkpoints after each epoch
(rank 0 only), `--resume` from the last one, and early stopping on a validation score.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .dataset import Record
from .distributed import DistEnv, broadcast_floats, check_replicas
from .errors import TrainingError
from .model import MEAN, STD
from .progress import Progress

log = logging.getLogger(__name__)

LAST, BEST = "ckpt_last.pt", "ckpt_best.pt"
PRECISE_BN_IMAGES = 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class CropDataset(Dataset):
    """Aligned crops with a target each (a class label, or a teacher embedding).

    A mirrored crop is still the same person; a teacher's embedding of it differs, so distillation
    passes `flipped_targets`.
    """

    def __init__(self, folder: Path, records: list[Record], targets: np.ndarray, flip: bool,
                 flipped_targets: np.ndarray | None = None,
                 augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None) -> None:  # fmt: skip
        self.paths = [str(Path(folder) / r.crop) for r in records]
        self.targets, self.flipped_targets, self.flip = targets, flipped_targets, flip
        self.augment = augment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if crop is None:
            raise TrainingError(f"crop {self.paths[i]} is unreadable: re-run ingest")
        target = self.targets[i]
        if self.flip and random.random() < 0.5:
            crop = crop[:, ::-1]
            if self.flipped_targets is not None:
                target = self.flipped_targets[i]
        if self.augment is not None:
            # Drawn from `random`, whose state the checkpoints carry: a resumed run augments the same.
            crop = self.augment(crop, np.random.default_rng(random.getrandbits(64)))
        rgb = np.ascontiguousarray(crop[..., ::-1].transpose(2, 0, 1))
        return (torch.from_numpy(rgb).float() - MEAN) / STD, torch.as_tensor(target)


@torch.no_grad()
def precise_bn(backbone: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Re-estimate BatchNorm statistics as a plain average over a fixed set of training images.

    The running averages lag while the weights still move fast (short runs), which makes the
    eval-mode embeddings (what is served) collapse towards one direction.
    """
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = backbone.training
    backbone.train()
    for images, _ in loader:
        backbone(images.to(device))
    backbone.train(was_training)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


@dataclass
class LoopConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    clip_grad: float = 5.0
    patience: int = 3
    workers: int = 0
    amp: bool = False
    max_steps: int | None = None
    seed: int = 0
    constant_lr: bool = False  # the overfit check: no warm-up or decay
    precise_bn: bool = True  # False when BatchNorm statistics are frozen (fine-tuning)
    progress: bool = True
    max_minutes: float | None = None  # time box: stop after the epoch that crosses it


@dataclass
class FitResult:
    best_score: float
    epochs_run: int
    steps: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * max(0.0, 1.0 - progress) ** 2


def _atomic_save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash never leaves half a checkpoint


class Loop:
    """Fits `trainee` (a module whose forward(x, target) returns the loss) on `dataset`.

    `validate(backbone) -> float` runs on rank 0 after each epoch; higher is better. `extra`
    goes into every checkpoint (configs and class names the later steps need).
    """

    def __init__(self, trainee: nn.Module, dataset: Dataset, cfg: LoopConfig, env: DistEnv, out: Path | None,
                 validate: Callable[[nn.Module], float], extra: dict) -> None:  # fmt: skip
        self.cfg, self.env, self.out, self.validate, self.extra = cfg, env, out, validate, extra
        self.trainee = trainee.to(env.device)
        self.model: nn.Module = DistributedDataParallel(self.trainee) if env.distributed else self.trainee
        # Linear scaling: the effective batch grows with the number of processes.
        peak = cfg.lr * env.world
        params = [p for p in self.trainee.parameters() if p.requires_grad]  # frozen layers stay as imported
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=peak, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=peak, weight_decay=cfg.weight_decay)
        self.peak = peak
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp)
        self.sampler = DistributedSampler(dataset, env.world, env.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        self.loader = DataLoader(dataset, cfg.batch_size, sampler=self.sampler, num_workers=cfg.workers,
                                 drop_last=True, pin_memory=env.device.type == "cuda",
                                 persistent_workers=cfg.workers > 0)  # fmt: skip
        # A fixed subset of training images for precise_bn before each validation.
        subset = Subset(dataset, range(min(len(dataset), PRECISE_BN_IMAGES)))
        self.bn_loader = DataLoader(subset, cfg.batch_size, num_workers=cfg.workers)
        if len(self.loader) == 0:
            raise TrainingError(f"{len(dataset)} images make no full batch of {cfg.batch_size} per process")
        self.steps_per_epoch = len(self.loader)
        self.total = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total = min(self.total, cfg.max_steps)
        self.warmup = min(int(cfg.warmup_epochs * self.steps_per_epoch), self.total // 2)
        self.epoch, self.step, self.best, self.bad_epochs = 0, 0, -math.inf, 0
        self.started = time.perf_counter()
        self.history: list[dict] = []

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "backbone": self.trainee.backbone.state_dict(),
            "trainee": self.trainee.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "best": self.best, "bad_epochs": self.bad_epochs,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            **self.extra,
        }  # fmt: skip

    def resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.trainee.load_state_dict(state["trainee"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best = state["epoch"], state["step"], state["best"]
        self.bad_epochs, self.history = state["bad_epochs"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if self.env.main:
            log.info("resumed from %s at epoch %d, step %d (best %.4f)", path, self.epoch, self.step, self.best)

    def _save(self, improved: bool) -> None:
        if not (self.env.main and self.out):
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.state()
        _atomic_save(state, self.out / LAST)
        if improved:
            _atomic_save(state, self.out / BEST)
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(self.history[-1]) + "\n")

    # -- fitting -------------------------------------------------------------------------------
    def _train_step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.peak if self.cfg.constant_lr else lr_at(self.step, self.total, self.warmup, self.peak)
        with torch.autocast(self.env.device.type, enabled=self.cfg.amp):
            loss = self.model(images.to(self.env.device, non_blocking=True), targets.to(self.env.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.trainee.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingError(f"loss became {value} at step {self.step}: lower the learning rate")
        return value

    def _epoch(self) -> float:
        self.sampler.set_epoch(self.epoch)
        self.trainee.train()
        bar = Progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                       enabled=self.env.main and self.cfg.progress)  # fmt: skip
        losses = []
        for images, targets in self.loader:
            losses.append(self._train_step(images, targets))
            bar.update(len(images) * self.env.world, loss=losses[-1], lr=self.optimizer.param_groups[0]["lr"])
            if self.step >= self.total or self._out_of_time():
                break
        bar.close()
        self.last_rate = bar.rate()
        return float(np.mean(losses))

    def _out_of_time(self) -> bool:
        minutes = self.cfg.max_minutes
        return minutes is not None and time.perf_counter() - self.started > 60 * minutes

    def train_epoch(self) -> float:
        """One epoch of the real loader and step (the overfit check drives these one by one)."""
        return self._epoch()

    def fit(self) -> FitResult:
        stopped = False
        self.started = time.perf_counter()
        while self.epoch < self.cfg.epochs and self.step < self.total and not stopped:
            start = time.perf_counter()
            loss = self._epoch()
            stopped = self._out_of_time()
            if self.env.main and self.cfg.precise_bn:  # DDP hands rank 0's BatchNorm buffers to every rank at the next forward
                precise_bn(self.trainee.backbone, self.bn_loader, self.env.device)
            score = self.validate(self.trainee.backbone) if self.env.main else 0.0
            score = broadcast_floats(self.env, [score])[0]
            improved = score > self.best
            # Patience starts once validation shows any skill: early epochs often score 0.
            self.bad_epochs = 0 if improved or self.best <= 0 else self.bad_epochs + 1
            self.best = max(self.best, score)
            self.epoch += 1
            stopped = stopped or self.bad_epochs >= self.cfg.patience
            self.history.append({
                "epoch": self.epoch, "step": self.step, "loss": loss, "val": score, "best": self.best,
                "images_per_s": self.last_rate, "seconds": time.perf_counter() - start,
            })  # fmt: skip
            if self.env.main:
                log.info("epoch %d: loss %.4f, val %.4f (best %.4f)%s", self.epoch, loss, score, self.best,
                         ", stopping early" if stopped else "")  # fmt: skip
            self._save(improved)
        check_replicas(self.env, self.trainee)
        return FitResult(self.best, self.epoch, self.step, stopped, self.history)
