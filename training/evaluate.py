"""`evaluate`: TAR at FAR on the held-out test identities, ROC/DET plots, error analysis by
slice (brightness, blur, face size, condition tags, source) and the worst errors, as a model card.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelock_mqtt.models.metrics import supports, tar_at_far, threshold_at_far

from .config import EvaluateConfig, GateConfig
from .dataset import DatasetManifest, Record, load_crops, select
from .errors import DatasetError
from .model import backbone_from_checkpoint, embed
from .model_card import write_model_card
from .plots import save_roc_det


@dataclass(frozen=True)
class Pairs:
    """Every unordered pair (i < j) of a set of crops with its cosine score."""

    records: list[Record]
    i: np.ndarray
    j: np.ndarray
    scores: np.ndarray
    same: np.ndarray

    @property
    def genuine(self) -> np.ndarray:
        return self.scores[self.same]

    @property
    def impostor(self) -> np.ndarray:
        return self.scores[~self.same]


def all_pairs(records: list[Record], embeddings: np.ndarray) -> Pairs:
    i, j = np.triu_indices(len(records), k=1)
    labels = np.array([r.identity for r in records])
    scores = (embeddings @ embeddings.T)[i, j]
    return Pairs(records, i.astype(np.int32), j.astype(np.int32), scores.astype(np.float32), labels[i] == labels[j])


def _bucket(value: float | None, edges: list[tuple[float, str]], none: str) -> str:
    if value is None:
        return none
    return next((name for limit, name in edges if value < limit), edges[-1][1])


SLICES: dict[str, Callable[[Record], list[str]]] = {
    "brightness": lambda r: [_bucket(r.brightness, [(50, "dark <50"), (100, "dim 50-100"), (170, "normal 100-170"), (256, "bright >170")], "")],
    "blur": lambda r: [_bucket(r.blur, [(40, "blurry <40"), (150, "soft 40-150"), (1e12, "sharp >150")], "")],
    "face size": lambda r: [_bucket(r.face_px, [(40, "tiny <40 px"), (80, "small 40-80 px"), (160, "medium 80-160 px"), (1e9, "large >160 px")], "pre-aligned (unknown)")],
    "condition": lambda r: r.tags,
    "source": lambda r: [r.source],
}  # fmt: skip


def slice_table(pairs: Pairs, threshold: float) -> list[dict]:
    """TAR and FAR at `threshold` over pairs with at least one image in each slice."""
    rows = []
    for kind, values_of in SLICES.items():
        values = [set(values_of(r)) for r in pairs.records]
        for value in sorted(set().union(*values)):
            member = np.array([value in v for v in values])
            touch = member[pairs.i] | member[pairs.j]
            genuine, impostor = pairs.scores[touch & pairs.same], pairs.scores[touch & ~pairs.same]
            rows.append({
                "slice": kind, "value": value, "images": int(member.sum()),
                "genuine": int(len(genuine)), "impostor": int(len(impostor)),
                "tar": float(np.mean(genuine > threshold)) if len(genuine) else None,
                "far": float(np.mean(impostor > threshold)) if len(impostor) else None,
            })  # fmt: skip
    return rows


def worst(pairs: Pairs, k: int) -> tuple[list[dict], list[dict]]:
    """The k highest-scoring impostor pairs and the k lowest-scoring genuine pairs."""

    def describe(index: int) -> dict:
        a, b = pairs.records[pairs.i[index]], pairs.records[pairs.j[index]]
        return {"score": float(pairs.scores[index]), "a": a.original, "b": b.original,
                "tags": sorted(set(a.tags) | set(b.tags))}  # fmt: skip

    impostor_idx, genuine_idx = np.flatnonzero(~pairs.same), np.flatnonzero(pairs.same)
    top = impostor_idx[np.argsort(-pairs.scores[impostor_idx])[:k]]
    bottom = genuine_idx[np.argsort(pairs.scores[genuine_idx])[:k]]
    return [describe(x) for x in top], [describe(x) for x in bottom]


def capped(records: list[Record], max_images: int) -> list[Record]:
    """Whole identities, in name order, up to `max_images` (all pairs grow quadratically)."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.identity, []).append(r)
    kept: list[Record] = []
    for identity in sorted(groups):
        if len(kept) + len(groups[identity]) > max_images:
            break
        kept += groups[identity]
    return kept


def failing_slices(rows: list[dict], overall_tar: float, target_far: float, min_genuine: int = 20,
                   tar_gap: float = 0.05, far_ratio: float = 2.0) -> list[dict]:  # fmt: skip
    """Slices that fail at the operating threshold: TAR `tar_gap` or more below the overall TAR
    (over at least `min_genuine` genuine pairs), or FAR above `far_ratio` x the target."""
    failing = []
    for r in rows:
        reasons = []
        if r["tar"] is not None and r["genuine"] >= min_genuine and r["tar"] <= overall_tar - tar_gap:
            reasons.append(f"TAR {100 * r['tar']:.1f} % vs {100 * overall_tar:.1f} % overall")
        if r["far"] is not None and r["impostor"] * target_far >= 3 and r["far"] > far_ratio * target_far:
            reasons.append(f"FAR {r['far']:.1e} over {far_ratio:g}x the target")
        if reasons:
            failing.append({"slice": r["slice"], "value": r["value"], "why": "; ".join(reasons)})
    return failing


def metrics_of(records: list[Record], embeddings: np.ndarray, cfg: EvaluateConfig, gate: GateConfig,
               model: dict) -> tuple[dict, Pairs]:  # fmt: skip
    """Every number of a model card, from the test records' embeddings (any model, any runtime)."""
    pairs = all_pairs(records, embeddings)
    if not len(pairs.genuine) or not len(pairs.impostor):
        raise DatasetError("the test split needs two identities and an identity with two images")
    n_impostor = len(pairs.impostor)
    table = tar_at_far(pairs.genuine, pairs.impostor, cfg.fars)
    # Slices at the gate's target FAR, or at the lowest FAR this test set can support.
    reference_far = max(gate.target_far, 3.0 / n_impostor)
    threshold = threshold_at_far(pairs.impostor, reference_far)
    false_accepts, false_rejects = worst(pairs, cfg.worst)
    slices = slice_table(pairs, threshold)
    metrics = {
        "model": model,
        "test_images": len(records),
        "test_identities": len({r.identity for r in records}),
        "n_genuine": int(len(pairs.genuine)),
        "n_impostor": n_impostor,
        "tar_at_far": list(table.values()),
        "lowest_supported_far": 3.0 / n_impostor,
        "reference_far": reference_far,
        "reference_threshold": threshold,
        "reference_supported": supports(n_impostor, reference_far),
        "slices": slices,
        "failing_slices": failing_slices(slices, float(np.mean(pairs.genuine > threshold)), reference_far),
        "worst_false_accepts": false_accepts,
        "worst_false_rejects": false_rejects,
    }
    return metrics, pairs


def checkpoint_model_info(checkpoint: Path, model_cfg) -> dict:
    kind = ("SFace (OpenCV Zoo 2021dec), imported from ONNX and fine-tuned" if model_cfg.arch == "sface"
            else "MobileFaceNet-style embedder trained from scratch")  # fmt: skip
    return {"description": f"{kind} with a margin loss by FaceLock's `training/` pipeline.",
            "source": f"checkpoint `{checkpoint}`", "config": model_cfg.model_dump(mode="json")}  # fmt: skip


def evaluate(manifest: DatasetManifest, folder: Path, checkpoint: Path, cfg: EvaluateConfig, gate: GateConfig,
             out: Path, title: str) -> dict:  # fmt: skip
    """Write metrics.json, roc.png, det.png and model_card.md into `out`; return the metrics."""
    records = capped(select(manifest, "test"), cfg.max_images)
    backbone, model_cfg = backbone_from_checkpoint(checkpoint)
    metrics, pairs = metrics_of(records, embed(backbone, load_crops(folder, records)), cfg, gate,
                                checkpoint_model_info(checkpoint, model_cfg))  # fmt: skip
    write_card(metrics, pairs, manifest, out, title)
    return metrics


def write_card(metrics: dict, pairs: Pairs, manifest: DatasetManifest, out: Path, title: str) -> None:
    """metrics.json, roc.png, det.png and model_card.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    roc, det = save_roc_det(pairs.genuine, pairs.impostor, out, title)
    metrics["plots"] = [roc.name, det.name]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(metrics, manifest, out / "model_card.md", title)
