"""Split by identity, never by image: no person is in two of train / val / test."""

from __future__ import annotations

from collections import Counter

import numpy as np

from .config import SplitConfig
from .dataset import DatasetManifest, SplitInfo
from .errors import DatasetError


def default_ratios(n_images: int) -> tuple[float, float, float]:
    """Small data needs large held-out sets to measure anything; big data can spare 1 %."""
    if n_images < 100_000:
        return (0.6, 0.2, 0.2)
    if n_images < 1_000_000:
        return (0.9, 0.05, 0.05)
    return (0.98, 0.01, 0.01)


def assign(identities: list[str], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Deterministic identity -> split; val and test get at least one identity each when possible."""
    order = sorted(identities)
    np.random.default_rng(seed).shuffle(order)
    n = len(order)
    n_val = max(1, round(ratios[1] * n)) if ratios[1] > 0 and n >= 3 else 0
    n_test = max(1, round(ratios[2] * n)) if ratios[2] > 0 and n >= 3 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DatasetError(f"{n} identities cannot be split {ratios}: need at least one per split")
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return dict(zip(order, names, strict=True))


def split(manifest: DatasetManifest, cfg: SplitConfig) -> DatasetManifest:
    """The manifest with each record's split set and the split recorded."""
    records = manifest.records
    if not records:
        raise DatasetError("the dataset is empty: nothing to split")
    ratios = cfg.ratios or default_ratios(len(records))
    unknown = set(cfg.holdout_sources + cfg.eval_sources) - {r.source for r in records}
    if unknown:
        raise DatasetError(f"split: holdout_sources / eval_sources name sources not in the dataset: {sorted(unknown)}")
    held = {r.identity for r in records if r.source in cfg.holdout_sources}
    shared = {r.identity for r in records if r.source in cfg.eval_sources} - held
    # The ratios apply to the rest; held-out identities go to test whole, eval-only ones half to val.
    mapping = assign(sorted({r.identity for r in records} - held - shared), ratios, cfg.seed)
    mapping.update({identity: "test" for identity in held})
    order = sorted(shared)
    np.random.default_rng(cfg.seed).shuffle(order)
    mapping.update({identity: "val" if i < len(order) // 2 else "test" for i, identity in enumerate(order)})
    new_records = [r.model_copy(update={"split": mapping[r.identity]}) for r in records]
    info = SplitInfo(
        seed=cfg.seed,
        ratios=ratios,
        identities=dict(Counter(mapping.values())),
        images=dict(Counter(r.split for r in new_records)),
        holdout_sources=list(cfg.holdout_sources),
        eval_sources=list(cfg.eval_sources),
    )
    return manifest.model_copy(update={"records": new_records, "split": info})


def check_disjoint(manifest: DatasetManifest) -> None:
    """Raise DatasetError when any identity appears in two splits."""
    splits_of: dict[str, set[str]] = {}
    for r in manifest.records:
        splits_of.setdefault(r.identity, set()).add(str(r.split))
    shared = sorted(i for i, s in splits_of.items() if len(s) > 1)
    if shared:
        raise DatasetError(f"identities in more than one split: {shared[:5]}")
