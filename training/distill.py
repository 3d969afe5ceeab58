"""`distill`: a small student learns to reproduce a teacher bundle's embeddings (default: SFace).

No labels are used: the loss is 1 - cosine(student(crop), teacher(crop)), on each crop and its
mirror image. The report compares student and teacher on LFW pairs whose identities the student
never saw (the `distill.heldout_folds` of pairs.txt; View-2 folds are identity-disjoint), with
the threshold chosen on the other held-out folds, and their ONNX Runtime speed per face.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelock_mqtt.models.bundle import Bundle
from facelock_mqtt.models.metrics import lfw_10fold
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.tools.evaluate import read_pairs

from .config import RunConfig
from .dataset import Record, load_crops, load_manifest, select
from .distributed import DistEnv
from .dedupe import embed_with_progress
from .errors import DatasetError
from .export import export_bundle
from .loop import BEST, CropDataset, Loop, LoopConfig, seed_everything
from .model import backbone_from_checkpoint, build, embed

log = logging.getLogger(__name__)


class DistillTrainee(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(self.backbone(images).float(), teacher.float(), dim=1)).mean()


def heldout_identities(lfw: Path, folds: list[int]) -> set[str]:
    """LFW names appearing in the held-out folds' pairs."""
    pairs, _, fold_of = read_pairs(lfw / "pairs.txt", lfw)
    return {p.parent.name for (a, b), f in zip(pairs, fold_of, strict=True) if f in folds for p in (a, b)}


def usable(records: list[Record], lfw: Path | None, heldout: set[str]) -> list[Record]:
    """Records not of a held-out LFW identity (matched by the original file's folder)."""
    if lfw is None:
        return records
    root = lfw.resolve()
    return [r for r in records if not (Path(r.original).resolve().parent.parent == root
                                       and Path(r.original).parent.name in heldout)]  # fmt: skip


def teacher_targets(teacher: Embedder, folder: Path, records: list[Record], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Teacher embeddings of each crop and of its mirror, cached by the list of crops."""
    key = hashlib.sha256("\n".join(r.crop for r in records).encode()).hexdigest()
    if cache.is_file():
        data = np.load(cache)
        if str(data["key"]) == key:
            return data["plain"], data["flipped"]
    crops = load_crops(folder, records)
    plain = embed_with_progress(teacher, crops, "teacher embeddings")
    flipped = embed_with_progress(teacher, np.ascontiguousarray(crops[:, :, ::-1]), "teacher embeddings (mirrored)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=key, plain=plain, flipped=flipped)
    return plain, flipped


def cosine_scorer(folder: Path, records: list[Record], targets: np.ndarray):
    """Validation score: mean student-teacher cosine on held-out crops."""
    crops = load_crops(folder, records)
    return lambda backbone: float(np.mean(np.sum(embed(backbone, crops) * targets, axis=1)))


def distill(cfg: RunConfig, folder: Path, teacher_bundle: Bundle, env: DistEnv, out: Path, threads: int) -> Path:
    """Train the student; return its best checkpoint."""
    seed_everything(cfg.seed)
    d = cfg.distill
    teacher = Embedder(teacher_bundle, threads)
    manifest = load_manifest(folder)
    heldout = heldout_identities(d.lfw, d.heldout_folds) if d.lfw else set()
    train_records = usable(select(manifest, "train"), d.lfw, heldout)
    val_records = usable(select(manifest, "val"), d.lfw, heldout)
    if not train_records or not val_records:
        raise DatasetError("after removing the held-out LFW identities, the train or val split is empty")
    plain, flipped = teacher_targets(teacher, folder, train_records, out / "teacher_train.npz")
    val_targets, _ = teacher_targets(teacher, folder, val_records, out / "teacher_val.npz")
    model_cfg = cfg.model.model_copy(update={"embedding_size": teacher.size})
    extra = {"model_config": model_cfg.model_dump(mode="json"), "teacher": teacher_bundle.manifest.fingerprint,
             "run": cfg.name, "dataset": str(folder)}  # fmt: skip
    loop_cfg = LoopConfig(
        epochs=d.epochs, batch_size=d.batch_size, lr=d.lr, weight_decay=d.weight_decay, optimizer="adamw",
        warmup_epochs=0.5, clip_grad=cfg.train.clip_grad, patience=cfg.train.patience, workers=cfg.train.workers,
        amp=cfg.train.amp == "auto" and env.device.type == "cuda", max_steps=cfg.train.max_steps, seed=cfg.seed,
    )  # fmt: skip
    dataset = CropDataset(folder, train_records, plain, flip=d.flip, flipped_targets=flipped)
    loop = Loop(DistillTrainee(build(model_cfg)), dataset, loop_cfg, env, out,
                cosine_scorer(folder, val_records, val_targets), extra)  # fmt: skip
    log.info("distilling %s into a %d-d student on %d crops (%d held-out LFW identities excluded)",
             teacher_bundle.manifest.name, teacher.size, len(train_records), len(heldout))  # fmt: skip
    result = loop.fit()
    log.info("best validation cosine to the teacher: %.4f", result.best_score)
    return out / BEST


def _ms_per_face(embedder: Embedder, crops: list[np.ndarray]) -> float:
    """Median time of one face at a time, as at a door: one crop per call."""
    embedder.embed(crops[:2])  # warm-up
    times = []
    for crop in crops:
        start = time.perf_counter()
        embedder.embed([crop])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def report(cfg: RunConfig, checkpoint: Path, teacher_bundle: Bundle, folder: Path, out: Path, threads: int) -> dict:
    """Student vs teacher: held-out LFW accuracy and ms/face, both through ONNX Runtime."""
    d = cfg.distill
    if d.lfw is None:
        raise DatasetError("distill.lfw is not set: no LFW pairs to report accuracy on")
    backbone, _ = backbone_from_checkpoint(checkpoint)
    pairs, same, folds = read_pairs(d.lfw / "pairs.txt", d.lfw)
    keep = np.isin(folds, d.heldout_folds)
    files = sorted({p for (a, b), k in zip(pairs, keep, strict=True) if k for p in (a, b)})
    crops = [read_image(p) for p in files]
    student_bundle, _ = export_bundle(backbone, teacher_bundle, None, np.stack(crops[:64]), cfg.export,
                                      out / "student_bundle", f"{cfg.name}-student")  # fmt: skip
    result = {"heldout_folds": d.heldout_folds, "pairs": int(keep.sum()), "images": len(files), "threads": threads}
    for name, bundle in (("teacher", teacher_bundle), ("student", student_bundle)):
        embedder = Embedder(bundle, threads)
        index = {p: i for i, p in enumerate(files)}
        e = embedder.embed(crops)
        scores = np.array([float(e[index[a]] @ e[index[b]]) for (a, b), k in zip(pairs, keep, strict=True) if k])
        accuracy, std = lfw_10fold(scores, same[keep], folds[keep])
        result[name] = {"bundle": bundle.manifest.fingerprint, "accuracy": accuracy, "accuracy_std": std,
                        "ms_per_face": _ms_per_face(embedder, crops[:200]),
                        "onnx_mb": bundle.file(bundle.manifest.embedder.file).stat().st_size / 1e6}  # fmt: skip
    (out / "report.json").write_text(json.dumps(result, indent=2))
    return result
