"""training/: the evaluate model card, the sweep table and distillation from the SFace teacher,
each run for a few steps on real crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# First: skips this module cleanly (or fails in CI) when torch is missing, like test_training.
from test_training import CPU, dataset, facelock_data, torch  # noqa: F401 (fixtures)

from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.embed import Embedder
from training.config import RunConfig
from training.dataset import load_crops, load_manifest, select
from training.distill import distill
from training.evaluate import evaluate
from training.model import MobileFaceNet, backbone_from_checkpoint, embed
from training.sweep import sweep
from training.train import fit_arcface


def _short(cfg: RunConfig, steps: int) -> RunConfig:
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_steps": steps})})


def test_evaluate_writes_a_model_card_with_plots_slices_and_worst_errors(dataset, tmp_path: Path) -> None:
    cfg, folder = dataset
    fit_arcface(_short(cfg, 4), folder, CPU, tmp_path / "train")
    manifest = load_manifest(folder)
    metrics = evaluate(manifest, folder, tmp_path / "train" / "ckpt_last.pt", cfg.evaluate, cfg.gate,
                       tmp_path / "eval", "tiny")  # fmt: skip
    n = metrics["n_impostor"]
    assert n == sum(1 for a in range(metrics["test_images"]) for b in range(a)) - metrics["n_genuine"]
    # Supported exactly when the rule of three allows it.
    assert [row["supported"] for row in metrics["tar_at_far"]] == [n * far >= 3 for far in cfg.evaluate.fars]
    assert {s["slice"] for s in metrics["slices"]} >= {"brightness", "blur", "face size", "source"}
    assert len(metrics["worst_false_accepts"]) == cfg.evaluate.worst
    top = metrics["worst_false_accepts"][0]
    assert Path(top["a"]).parent.name != Path(top["b"]).parent.name  # impostor pairs: different people
    card = (tmp_path / "eval" / "model_card.md").read_text()
    for heading in ("## Data", "## Verification on held-out identities", "## Error analysis by slice", "## Worst errors"):
        assert heading in card
    assert "**no**" in card  # 1e-6 cannot be supported by a few thousand impostor pairs
    for plot in ("roc.png", "det.png"):
        assert (tmp_path / "eval" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_genuine"] == metrics["n_genuine"]


def test_sweep_runs_the_budgeted_trials_and_marks_the_best(dataset, tmp_path: Path) -> None:
    cfg, folder = dataset
    cfg = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={
        "trials": 2, "epochs": 1, "max_steps": 2, "lr": [0.01, 0.05], "margin": [0.3], "weight_decay": [1e-4],
        "embedding_size": [32]})})  # fmt: skip
    rows = sweep(cfg, folder, CPU, tmp_path)
    assert sorted(r["lr"] for r in rows) == [0.01, 0.05] and all(r["embedding_size"] == 32 for r in rows)
    table = (tmp_path / "results.md").read_text()
    assert table.count("**best**") == 1
    best = RunConfig.model_validate_json((tmp_path / "best.json").read_text())
    assert best.train.lr == max(rows, key=lambda r: r["val_tar"])["lr"] and best.model.embedding_size == 32


def test_distillation_moves_the_student_towards_the_teacher(dataset, facelock_data: Path, tmp_path: Path) -> None:
    cfg, folder = dataset
    cfg = cfg.model_copy(update={
        "train": cfg.train.model_copy(update={"max_steps": None}),
        "distill": cfg.distill.model_copy(update={"epochs": 5, "batch_size": 16, "lr": 1e-2, "lfw": None}),
    })  # fmt: skip
    teacher = default_bundle(facelock_data)
    checkpoint = distill(cfg, folder, teacher, CPU, tmp_path, threads=1)
    student, student_cfg = backbone_from_checkpoint(checkpoint)
    assert student_cfg.embedding_size == teacher.manifest.embedder.embedding_size  # the teacher's size
    crops = load_crops(folder, select(load_manifest(folder), "val"))
    target = Embedder(teacher, threads=1).embed(list(crops))
    trained = float(np.mean(np.sum(embed(student, crops) * target, axis=1)))
    torch.manual_seed(0)
    fresh = MobileFaceNet(student_cfg)
    untrained = float(np.mean(np.sum(embed(fresh, crops) * target, axis=1)))
    assert trained > untrained + 0.05
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log and max(e["val"] for e in log) == pytest.approx(trained, abs=1e-4)
