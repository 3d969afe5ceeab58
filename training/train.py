"""`train`: ArcFace training of the backbone on the train split, early-stopped on val TAR@FAR.

Runs as one process, or as N under `torchrun --nproc_per_node=N -m training train ...`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelock_mqtt.models.metrics import all_pairs_scores, far_key, tar_at_far

from .augment import Augmenter
from .config import RunConfig, TrainConfig
from .dataset import Record, labels_of, load_crops, load_manifest, select
from .dedupe import cached_served_embeddings
from .distributed import DistEnv, broadcast_floats, setup, teardown
from .errors import OverfitFailed, TrainingError
from .loop import LAST, CropDataset, FitResult, Loop, LoopConfig, seed_everything
from .model import ArcFaceHead, ArcFaceTrainee, build, embed
from .overfit import run_overfit

log = logging.getLogger(__name__)


def tar_scorer(folder: Path, records: list[Record], far: float) -> Callable[[nn.Module], float]:
    """Validation score: TAR at `far` over all pairs of the (identity-disjoint) val split."""
    crops = load_crops(folder, records)
    labels = [r.identity for r in records]

    def score(backbone: nn.Module) -> float:
        genuine, impostor = all_pairs_scores(embed(backbone, crops), labels)
        if len(genuine) == 0 or len(impostor) == 0:
            raise TrainingError("the val split needs identities with two or more images, and two identities")
        return float(tar_at_far(genuine, impostor, [far])[far_key(far)]["tar"])

    return score


def loop_config(cfg: TrainConfig, seed: int, device: torch.device) -> LoopConfig:
    return LoopConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        momentum=cfg.momentum, warmup_epochs=cfg.warmup_epochs, clip_grad=cfg.clip_grad,
        patience=cfg.patience, workers=cfg.workers, amp=cfg.amp == "auto" and device.type == "cuda",
        max_steps=cfg.max_steps, seed=seed, max_minutes=cfg.max_minutes,
    )  # fmt: skip


def make_trainee(cfg: RunConfig, folder: Path, records: list[Record], labels: np.ndarray, classes: int) -> ArcFaceTrainee:
    """Backbone (fresh or imported) + margin head, the head's centres at the class means if asked."""
    backbone = build(cfg.model)
    head = ArcFaceHead(cfg.model.embedding_size, classes, cfg.head)
    if cfg.head.init == "class_mean":
        log.info("head: class centres from the mean embedding of %d training images", len(records))
        # The unmodified served SFace computes the dedupe cache's vectors (to 1e-5): reuse them.
        served = cfg.model.arch == "sface" and cfg.model.pretrained is None and cfg.model.init_from is None
        vectors = cached_served_embeddings(folder, records) if served else None
        if vectors is None:
            vectors = embed(backbone, load_crops(folder, records))
        head.init_from_means(torch.from_numpy(vectors), torch.from_numpy(labels))
    return ArcFaceTrainee(backbone, head, freeze_bn=cfg.model.freeze_bn, anchor=cfg.train.anchor)


def anchored_targets(folder: Path, records: list[Record], labels: np.ndarray,
                     backbone: nn.Module) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Rows of [label, the starting backbone's embedding of the clean crop] for the crop and its mirror."""
    from .distill import teacher_targets

    class Teacher:  # the backbone before any step: for an imported SFace, the served fp32 model to 1e-5
        @staticmethod
        def embed(crops: list[np.ndarray]) -> np.ndarray:
            return embed(backbone, np.stack(crops))

    plain, flipped = teacher_targets(Teacher, folder, records, Path(folder) / "anchor_targets.npz")
    column = labels[:, None].astype(np.float32)
    return np.hstack([column, plain]), np.hstack([column, flipped])


def fit_arcface(cfg: RunConfig, folder: Path, env: DistEnv, out: Path | None, resume: bool = False) -> FitResult:
    """Train on `folder`'s train split; checkpoints to `out` (rank 0) unless it is None."""
    return arcface_loop(cfg, folder, env, out, resume).fit()


def arcface_loop(cfg: RunConfig, folder: Path, env: DistEnv, out: Path | None, resume: bool = False) -> Loop:
    """The ready-to-fit loop (resumed if asked) over the train split."""
    seed_everything(cfg.seed)
    manifest = load_manifest(folder)
    records = select(manifest, "train")
    labels, names = labels_of(records)
    trainee = make_trainee(cfg, folder, records, labels, len(names))
    augmenter = Augmenter(cfg.augment)
    validate = tar_scorer(folder, select(manifest, "val"), cfg.train.val_far) if env.main else (lambda _: 0.0)
    extra = {
        "model_config": cfg.model.model_dump(mode="json"),
        "head_config": cfg.head.model_dump(mode="json"),
        "classes": names,
        "run": cfg.name,
        "dataset": str(folder),
        "spec": getattr(trainee.backbone, "spec", None),  # an imported SFace rebuilds from it
        "augment": cfg.augment.model_dump(mode="json"),
    }
    settings = dataclasses.replace(loop_config(cfg.train, cfg.seed, env.device), precise_bn=not cfg.model.freeze_bn)
    targets, flipped = anchored_targets(folder, records, labels, trainee.backbone) if cfg.train.anchor else (labels, None)
    dataset = CropDataset(folder, records, targets, flip=True, flipped_targets=flipped,
                          augment=augmenter if augmenter.steps else None)  # fmt: skip
    loop = Loop(trainee, dataset, settings, env, out, validate, extra)
    loop.augmenter = augmenter
    if resume:
        if out is None or not (out / LAST).is_file():
            raise TrainingError(f"--resume: no checkpoint {LAST} in {out}")
        loop.resume(out / LAST)
    if env.main:
        log.info("training %d images of %d identities on %d process(es), %s; %d steps per epoch",
                 len(records), len(names), env.world, env.device, loop.steps_per_epoch)  # fmt: skip
    return loop


def overfit_gate(cfg: RunConfig, folder: Path, env: DistEnv) -> None:
    """Rank 0 runs the overfit check; every rank stops when it fails."""
    passed = 1.0
    if env.main:
        result = run_overfit(folder, load_manifest(folder), cfg.model, cfg.head, cfg.train.overfit, cfg.seed)
        log.info(result.message)
        passed = float(result.passed)
        message = result.message
    if broadcast_floats(env, [passed])[0] < 1:
        raise OverfitFailed(message if env.main else "overfit check failed on rank 0")


def train(cfg: RunConfig, folder: Path, out: Path, resume: bool = False, skip_overfit: bool = False) -> FitResult:
    env = setup(cfg.train.threads)
    try:
        if env.main:
            out.mkdir(parents=True, exist_ok=True)
            # Every setting of the run, logged where its checkpoints are.
            (out / "config.json").write_text(cfg.model_dump_json(indent=2))
        if not skip_overfit and not resume:
            overfit_gate(cfg, folder, env)
        loop = arcface_loop(cfg, folder, env, out, resume)
        result = loop.fit()
        if env.main:
            augmentation = loop.augmenter.report()
            log.info("augmentation: %s", augmentation)
            (out / "result.json").write_text(json.dumps({
                "best_val_tar": result.best_score, "val_far": cfg.train.val_far, "epochs": result.epochs_run,
                "steps": result.steps, "stopped_early": result.stopped_early, "processes": env.world,
                "augmentation": augmentation,
            }, indent=2))  # fmt: skip
        return result
    finally:
        teardown(env)
