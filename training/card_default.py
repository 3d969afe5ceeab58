"""`card-default`: the default bundle's model card, by the same code as a trained model's card.

The served default (YuNet + SFace 2021dec, run by onnxruntime exactly as the service runs it) is
measured on the run's held-out test split with evaluate.metrics_of and written by
model_card.write_model_card, like `evaluate` does for a checkpoint. On top come the LFW
benchmarks of `facelock eval lfw` (10-fold accuracy on pairs.txt, all-pairs TAR at each FAR),
rendered as the card's "benchmarks" block. The card names the SFace source file and served graph
by SHA-256 and the calibration it was shipped with, so a reader knows which model it describes.

The result is shipped as text in the package (facelock_mqtt/models/default_model_card.md, no
plot links) and copied into every default bundle as its model_card.md.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from facelock_mqtt.models.bundle import Bundle
from facelock_mqtt.models.default_bundle import CALIBRATION_FILE, SFACE, SOURCE_SHA256
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.settings import ModelSettings, QualitySettings
from facelock_mqtt.tools.evaluate import eval_lfw

from .compare import served_model
from .config import RunConfig
from .dataset import DatasetManifest, load_crops, select
from .evaluate import capped, metrics_of
from .model_card import write_model_card

TITLE = "default bundle (YuNet 2023mar + SFace 2021dec, served by onnxruntime)"


def default_model_info(bundle: Bundle) -> dict:
    """Which model the card describes: the SFace source and served graph by SHA-256, and the
    calibration the bundle serves."""
    manifest = bundle.manifest
    calibration = manifest.calibration
    far = min(calibration.thresholds, key=lambda t: t.far) if calibration and calibration.thresholds else None
    described = "none" if calibration is None else (
        f"`{CALIBRATION_FILE}` ({calibration.dataset}, {calibration.n_genuine:,} genuine and "
        f"{calibration.n_impostor:,} impostor pairs"
        + (f"; FAR {far.far:g} at threshold {far.threshold:.4f}, TAR {far.tar:.4f}" if far and far.tar is not None else "")
        + ")"
    )  # fmt: skip
    return {
        "description": "SFace (OpenCV Zoo 2021dec), as served by default, run by onnxruntime.",
        "source": f"default bundle `{manifest.fingerprint}` (embedder graph {manifest.embedder.graph or 'fp32'})",
        "sha256": {
            f"SFace source file ({SFACE})": SOURCE_SHA256[SFACE],
            "served embedder graph": manifest.files[manifest.embedder.file].sha256,
        },
        "calibration": described,
    }


def lfw_benchmarks(result: dict) -> list[dict]:
    """`eval lfw`'s numbers as the card's benchmark rows."""
    dataset = Path(result["dataset"]).name
    rows = [{
        "benchmark": "LFW 10-fold accuracy (threshold chosen on 9 folds, tested on the 10th)",
        "dataset": f"{dataset}, pairs.txt ({result['n_pairs']:,} pairs, {result['n_folds']} folds)",
        "result": f"{100 * result['accuracy']:.2f} % ± {100 * result['accuracy_std']:.2f}",
        "value": result["accuracy"],
    }]  # fmt: skip
    for key, tar in result["tar_at_far"].items():
        supported = result["far_supported"][key]
        rows.append({
            "benchmark": f"TAR at FAR {key}, all pairs",
            "dataset": f"{dataset}, {result['n_genuine']:,} genuine / {result['n_impostor']:,} impostor pairs",
            "result": f"{tar:.4f} at threshold {result['threshold_at_far'][key]:.4f}"
                      + ("" if supported else " (**unsupported**: too few impostors)"),
            "value": tar,
        })  # fmt: skip
    return rows


def regenerate_command(config: Path, out: Path, lfw: Path | None) -> str:
    words = ["python", "-m", "training", "card-default", "--config", config, *(["--lfw", lfw] if lfw else []), "--out", out]
    return " ".join(shlex.quote(str(x)) for x in words)


def card_default(cfg: RunConfig, manifest: DatasetManifest, folder: Path, bundle: Bundle, lfw: Path | None,
                 out: Path, note: str, threads: int = 1) -> dict:  # fmt: skip
    """Measure the default bundle and write its card to `out` (no plot links); return the metrics.

    `lfw`: an lfw_aligned_112 folder with pairs.txt for the benchmarks block (None: no block)."""
    records = capped(select(manifest, "test"), cfg.evaluate.max_images)
    embeddings = served_model(Embedder(bundle, threads=threads)).embed(load_crops(folder, records))
    metrics, _ = metrics_of(records, embeddings, cfg.evaluate, cfg.gate, default_model_info(bundle))
    if lfw is not None:
        engine = FaceEngine(bundle, ModelSettings(threads=threads), QualitySettings())
        result = eval_lfw(engine, lfw, lfw / "pairs.txt")
        metrics["benchmarks"] = lfw_benchmarks(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_model_card(metrics, manifest, out, TITLE, plots=False, note=note)
    return metrics


def write_metrics(metrics: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2))
