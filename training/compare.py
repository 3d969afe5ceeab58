"""`compare`: the acceptance gate against the default — a candidate checkpoint and the served
default model, side by side on the same held-out identities.

Both are measured by the same code: all-pairs TAR at each FAR on the clean test split; TAR and
FAR per natural slice (lighting, face size, grey, blur, source) at each model's own threshold for
the gate's target FAR; and TAR on degraded copies of the test crops (training/augment.DEGRADED:
a clean enrolment crop against a degraded probe, as at the door). The candidate is accepted only
if its all-pairs TAR at `gate.compare_far` is at most `gate.max_tar_drop` below the default's
(and that FAR is supported by the impostor count) and it beats the default on every degraded
slice. The default's numbers also become its model card (the same format as a trained model's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelock_mqtt.models.metrics import far_key, supports
from facelock_mqtt.pipeline.embed import Embedder

from .augment import DEGRADED, degrade_all
from .config import RunConfig
from .dataset import DatasetManifest, Record, load_crops, select
from .dedupe import embed_with_progress
from .compare_report import write_report
from .evaluate import Pairs, capped, metrics_of, write_card
from .model import backbone_from_checkpoint, embed

log = logging.getLogger(__name__)

DEGRADED_IMAGES = 800  # degraded slices: whole identities up to this many crops (embedding time)


@dataclass(frozen=True)
class Model:
    name: str
    embed: Callable[[np.ndarray], np.ndarray]  # (N, 112, 112, 3) BGR uint8 -> (N, D) unit vectors


def served_model(embedder: Embedder, name: str = "default") -> Model:
    return Model(name, lambda crops: embed_with_progress(embedder, crops, f"{name}: embeddings"))


def checkpoint_model(checkpoint: Path, name: str = "candidate") -> Model:
    backbone, _ = backbone_from_checkpoint(checkpoint)
    return Model(name, lambda crops: embed(backbone, crops))


def with_pairs(records: list[Record], limit: int) -> list[Record]:
    """Identities with two or more crops (they give genuine pairs), whole, up to `limit` crops."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.identity] = counts.get(r.identity, 0) + 1
    return capped([r for r in records if counts[r.identity] >= 2], limit)


def degraded_slice(clean: np.ndarray, probes: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Clean enrolment i against degraded probe j (i != j): TAR and FAR at `threshold`."""
    scores = clean @ probes.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    other = labels[:, None] != labels[None, :]
    genuine, impostor = scores[same], scores[other]
    return {"genuine": int(len(genuine)), "impostor": int(len(impostor)),
            "tar": float(np.mean(genuine > threshold)), "far": float(np.mean(impostor > threshold))}  # fmt: skip


def measure(model: Model, records: list[Record], crops: np.ndarray, degraded: list[Record],
            degraded_crops: dict[str, np.ndarray], cfg: RunConfig, info: dict) -> tuple[dict, Pairs]:  # fmt: skip
    """The model card's metrics for one model, plus its degraded slices and TAR at compare_far."""
    embeddings = model.embed(crops)
    evaluate_cfg = cfg.evaluate.model_copy(update={"fars": sorted(set(cfg.evaluate.fars) | {cfg.gate.compare_far}, reverse=True)})
    metrics, pairs = metrics_of(records, embeddings, evaluate_cfg, cfg.gate, info)
    index = {r.crop: i for i, r in enumerate(records)}
    clean = embeddings[[index[r.crop] for r in degraded]]
    labels = np.array([r.identity for r in degraded])
    threshold = metrics["reference_threshold"]
    rows = {"clean": degraded_slice(clean, clean, labels, threshold)}
    rows |= {name: degraded_slice(clean, model.embed(c), labels, threshold) for name, c in degraded_crops.items()}
    return metrics | {"name": model.name, "degraded": rows}, pairs


def verdict(default: dict, candidate: dict, cfg: RunConfig) -> tuple[bool, list[str]]:
    key = far_key(cfg.gate.compare_far)
    d = next(r for r in default["tar_at_far"] if far_key(r["far"]) == key)
    c = next(r for r in candidate["tar_at_far"] if far_key(r["far"]) == key)
    reasons = []
    if not supports(candidate["n_impostor"], cfg.gate.compare_far):
        reasons.append(f"{candidate['n_impostor']:,} test impostor pairs cannot support FAR {cfg.gate.compare_far:g} "
                       "(rule of three): add test identities")  # fmt: skip
    if c["tar"] < d["tar"] - cfg.gate.max_tar_drop:
        reasons.append(f"all-pairs TAR at FAR {cfg.gate.compare_far:g}: {100 * c['tar']:.2f} % vs the default's "
                       f"{100 * d['tar']:.2f} %, more than {100 * cfg.gate.max_tar_drop:.1f} points lower")  # fmt: skip
    for name in DEGRADED:
        dt, ct = default["degraded"][name]["tar"], candidate["degraded"][name]["tar"]
        if not ct > dt:
            reasons.append(f"degraded slice '{name}' does not improve: TAR {100 * ct:.2f} % vs {100 * dt:.2f} %")
    return not reasons, reasons


def compare(cfg: RunConfig, manifest: DatasetManifest, folder: Path, default: Model, candidate: Model, out: Path,
            default_info: dict, candidate_info: dict) -> dict:  # fmt: skip
    """Measure both models, write `compare.json` and `compare.md` into `out`; return the report."""
    records = capped(select(manifest, "test"), cfg.evaluate.max_images)
    crops = load_crops(folder, records)
    degraded = with_pairs(records, DEGRADED_IMAGES)
    degraded_base = load_crops(folder, degraded)
    degraded_crops = {name: degrade_all(degraded_base, name, cfg.seed) for name in DEGRADED}
    models = ((default, default_info), (candidate, candidate_info))
    results = [measure(m, records, crops, degraded, degraded_crops, cfg, info) for m, info in models]
    accepted, reasons = verdict(results[0][0], results[1][0], cfg)
    report = {
        "test_images": len(records), "test_identities": len({r.identity for r in records}),
        "degraded_images": len(degraded), "target_far": cfg.gate.target_far, "compare_far": cfg.gate.compare_far,
        "max_tar_drop": cfg.gate.max_tar_drop, "accepted": accepted, "reasons": reasons,
        "models": [metrics for metrics, _ in results],
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    write_report(report, out / "compare.md")
    # Both model cards from the same code: the default's is the one its bundle should carry.
    for (metrics, pairs), title in zip(results, (f"{default.name} (served default)", candidate.name), strict=True):
        write_card(metrics, pairs, manifest, out / metrics["name"], title)
    return report
