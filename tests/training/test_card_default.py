"""`card-default`: the default bundle's model card from the same code as a trained model's, on a
small real test split (60 LFW identities) and a small real LFW pairs list, with the benchmarks
block and without plot links; the same metrics render as a trained model's card with plots."""

from __future__ import annotations

import json
from pathlib import Path

# First: skips this module cleanly (or fails in CI) when torch is missing, like test_training.
from test_training import dataset, facelock_data, torch  # noqa: F401 (fixtures)

from facelock_mqtt.models.default_bundle import CALIBRATION_FILE, SFACE, SOURCE_SHA256, default_bundle
from training.__main__ import main
from training.card_default import TITLE
from training.dataset import load_manifest, select
from training.evaluate import capped
from training.model_card import write_model_card

PEOPLE = {"Akhmed_Zakayev": [1, 2, 3], "Amber_Tamblyn": [1, 2], "Abel_Pacheco": [1, 2, 4], "Dean_Barker": [1]}
PAIRS = [
    "2\t2",
    "Akhmed_Zakayev\t1\t3", "Amber_Tamblyn\t1\t2", "Akhmed_Zakayev\t1\tDean_Barker\t1", "Amber_Tamblyn\t1\tAbel_Pacheco\t4",
    "Abel_Pacheco\t1\t4", "Akhmed_Zakayev\t2\t3", "Abel_Pacheco\t1\tDean_Barker\t1", "Akhmed_Zakayev\t2\tAmber_Tamblyn\t2",
]  # fmt: skip


def small_lfw(shared_data: Path, target: Path) -> Path:
    for name, numbers in PEOPLE.items():
        (target / name).mkdir(parents=True)
        for n in numbers:
            (target / name / f"{name}_{n:04d}.jpg").write_bytes(
                (shared_data / "lfw_aligned_112" / name / f"{name}_{n:04d}.jpg").read_bytes()
            )
    (target / "pairs.txt").write_text("\n".join(PAIRS) + "\n")
    return target


def test_card_default_writes_the_tar_table_benchmarks_and_which_model(dataset, facelock_data: Path, shared_data: Path,
                                                                     tmp_path: Path) -> None:  # fmt: skip
    cfg, folder = dataset
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "data").symlink_to(folder, target_is_directory=True)
    config = tmp_path / "tiny.json"
    config.write_text(cfg.model_dump_json())
    lfw = small_lfw(shared_data, tmp_path / "lfw")
    out = tmp_path / "card.md"
    argv = ["card-default", "--config", str(config), "--run-dir", str(tmp_path / "run"),
            "--facelock-data", str(facelock_data), "--lfw", str(lfw), "--out", str(out), "--threads", "1"]  # fmt: skip
    assert main(argv) == 0

    card = out.read_text()
    metrics = json.loads((tmp_path / "run" / "card_default" / "metrics.json").read_text())
    assert card.startswith(f"# Model card: {TITLE}")
    assert f"`python -m training card-default --config {config} --lfw {lfw} --out {out}`" in card
    # The same card format as a trained model's, without the plot links.
    assert "| FAR | threshold | TAR | supported |" in card and "## Error analysis by slice" in card
    assert "![ROC]" not in card and ".png" not in card
    test = capped(select(load_manifest(folder), "test"), cfg.evaluate.max_images)
    assert metrics["test_images"] == len(test) and [r["far"] for r in metrics["tar_at_far"]] == cfg.evaluate.fars
    # Which model and calibration it describes.
    bundle = default_bundle(facelock_data)
    assert SOURCE_SHA256[SFACE] in card and bundle.manifest.files["embedder"].sha256 in card
    assert CALIBRATION_FILE in card and f"{bundle.manifest.calibration.n_impostor:,} impostor pairs" in card
    # The benchmarks block: 10-fold accuracy over the 8 pairs of 2 folds, then TAR at each FAR.
    rows = metrics["benchmarks"]
    assert "## Benchmarks" in card and "LFW 10-fold accuracy" in rows[0]["benchmark"]
    assert "8 pairs, 2 folds" in rows[0]["dataset"] and 0.5 <= rows[0]["value"] <= 1.0
    assert [r["benchmark"] for r in rows[1:]] == [f"TAR at FAR {k}, all pairs" for k in ("1e-3", "1e-4", "1e-5", "1e-6")]
    assert all(f"| {r['benchmark']} | {r['dataset']} | {r['result']} |" in card for r in rows)
    assert all("unsupported" in r["result"] for r in rows[1:])  # 29 impostor pairs support no such FAR
    # The same metrics as any other model's card (a trained model may carry benchmarks too), plots linked.
    manifest = load_manifest(folder)
    write_model_card(metrics, manifest, tmp_path / "trained.md", "trained", plots=True)
    trained = (tmp_path / "trained.md").read_text()
    assert "![ROC](roc.png) ![DET](det.png)" in trained and "## Benchmarks" in trained
    without_plots = trained.replace("\n\n![ROC](roc.png) ![DET](det.png)", "")
    assert without_plots.split("## Data", 1)[1] == card.split("## Data", 1)[1]
