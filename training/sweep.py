"""`sweep`: a bounded random or grid search over lr, margin, weight decay and embedding size.

Each trial is a short training run scored by validation TAR at `train.val_far`; the table is
written as Markdown and JSON with the best trial marked, and the best full config is written
so `train --config <run>/sweep/best.json` continues from it.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np

from .config import RunConfig, SweepConfig
from .distributed import DistEnv
from .train import fit_arcface

log = logging.getLogger(__name__)

KEYS = ("lr", "margin", "weight_decay", "embedding_size")


def candidates(cfg: SweepConfig) -> list[dict]:
    """The trials to run: the grid in order, or distinct random draws, at most `cfg.trials`."""
    grid = [dict(zip(KEYS, values, strict=True)) for values in
            itertools.product(cfg.lr, cfg.margin, cfg.weight_decay, cfg.embedding_size)]  # fmt: skip
    if cfg.mode == "random":
        order = np.random.default_rng(cfg.seed).permutation(len(grid))
        grid = [grid[i] for i in order]
    return grid[: cfg.trials]


def trial_config(base: RunConfig, params: dict) -> RunConfig:
    s = base.sweep
    return base.model_copy(update={
        "train": base.train.model_copy(update={"lr": params["lr"], "weight_decay": params["weight_decay"],
                                               "epochs": s.epochs, "max_steps": s.max_steps}),
        "head": base.head.model_copy(update={"m": params["margin"]}),
        "model": base.model.model_copy(update={"embedding_size": params["embedding_size"]}),
    })  # fmt: skip


def table(rows: list[dict], val_far: float) -> str:
    best = max(range(len(rows)), key=lambda i: rows[i]["val_tar"])
    lines = [f"| | lr | margin | weight decay | embedding | val TAR@FAR={val_far:g} | epochs | seconds |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, r in enumerate(rows):
        mark = "**best**" if i == best else str(i + 1)
        lines.append(f"| {mark} | {r['lr']:g} | {r['margin']:g} | {r['weight_decay']:g} | {r['embedding_size']} | "
                     f"{r['val_tar']:.4f} | {r['epochs']} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def sweep(cfg: RunConfig, folder: Path, env: DistEnv, out: Path) -> list[dict]:
    """Run the trials one after another (no checkpoints); write results.{md,json} and best.json."""
    rows = []
    for params in candidates(cfg.sweep):
        start = time.perf_counter()
        result = fit_arcface(trial_config(cfg, params), folder, env, out=None)
        rows.append({**params, "val_tar": result.best_score, "epochs": result.epochs_run,
                     "seconds": time.perf_counter() - start})  # fmt: skip
        log.info("trial %d: %s -> val TAR %.4f", len(rows), params, result.best_score)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text(f"# Sweep of {cfg.name}\n\n{table(rows, cfg.train.val_far)}\n")
    best = max(rows, key=lambda r: r["val_tar"])
    best_cfg = trial_config(cfg, best).model_copy(update={"train": cfg.train.model_copy(
        update={"lr": best["lr"], "weight_decay": best["weight_decay"]})})  # fmt: skip
    (out / "best.json").write_text(best_cfg.model_dump_json(indent=2))
    return rows
