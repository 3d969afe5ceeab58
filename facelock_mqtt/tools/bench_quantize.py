"""Measure, gate and ship the int8 SFace graph: one run, fp32 and int8 side by side.

1. Calibration crops: NUAA live, ORL and Yale photos (people who are not in LFW), detected and
   aligned by the fp32 pipeline; a fixed draw of CROPS of them. LFW is used whole for the
   evaluation below, so no evaluated identity is ever seen by the calibration.
2. Activation ranges from those crops (onnxruntime's percentile calibrator at
   `quantize.RANGE_PERCENTILE`), then the int8 QDQ graph built from the ranges alone, exactly as
   a user's machine builds it at first start.
3. LFW 10-fold accuracy and TAR at FAR over all LFW pairs for both graphs (`facelock eval lfw`),
   and ms/face at batch 1, interleaved in the same process.
4. The acceptance gate: int8 may lose at most 0.05 points of LFW accuracy and 0.5 points of
   TAR at FAR 1e-6. Only then are its own thresholds measured (`facelock calibrate` on all LFW
   pairs) and, with `--write`, the ranges and the int8 calibration written into the package.

    python -m facelock_mqtt.tools.bench_quantize [--data ../shared/data] [--write] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime

from ..models import default_bundle as default
from ..models.bundle import Bundle, write_bundle
from ..models.modelprep import sha256_file
from ..models.quantize import GRAPH, RANGES_FILE, crop_tensor, quantize_embedder
from ..pipeline.engine import FaceEngine
from ..pipeline.imageio import read_image
from ..settings import ModelSettings, QualitySettings
from . import bench_core
from .evaluate import IMAGE_SUFFIXES, calibrate, eval_lfw

CALIBRATION_SETS = ("nuaa/live", "orl", "yale")
CROPS = 200
MAX_ACCURACY_DROP = 0.0005  # 0.05 points
MAX_TAR_DROP = 0.005  # 0.5 points at FAR 1e-6
GATE_FAR = "1e-6"
PACKAGE = Path(default.__file__).parent


def calibration_crops(engine: FaceEngine, data: Path, count: int = CROPS) -> tuple[list[np.ndarray], list[str]]:
    """A fixed draw of `count` aligned crops from the non-LFW photo sets, and their files."""
    crops, names = [], []
    for subset in CALIBRATION_SETS:
        files = sorted(p for p in (data / subset).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            found = engine.analyze(read_image(path), embed_poor=True)
            if found is not None:
                crops.append(found.crop)
                names.append(str(path.relative_to(data)))
    chosen = np.sort(np.random.default_rng(0).choice(len(crops), min(count, len(crops)), replace=False))
    return [crops[i] for i in chosen], [names[i] for i in chosen]


def int8_bundle(fp32: Bundle, int8_file: Path, folder: Path) -> Bundle:
    """A copy of the fp32 bundle that serves `int8_file` (uncalibrated)."""
    folder.mkdir(parents=True)
    for role in ("detector", default.FP32_FILE):
        shutil.copy(fp32.file(role), folder / fp32.manifest.files[role].path)
    shutil.copy(int8_file, folder / "sface_int8.onnx")
    # The fp32 model card is not copied: it does not describe the int8 graph.
    files = {role: e for role, e in fp32.manifest.files.items() if role != default.MODEL_CARD_ROLE}
    files["embedder"] = default.file_entry(folder, "sface_int8.onnx")
    # The fp32 view serves its FP32_FILE role: point the copy at the int8 file, or it would
    # quietly serve (and gate, and calibrate) the fp32 graph again.
    embedder = fp32.manifest.embedder.model_copy(update={"graph": GRAPH, "file": "embedder"})
    manifest = fp32.manifest.model_copy(update={"files": files, "embedder": embedder, "calibration": None})
    return write_bundle(folder, manifest)


def speed(engines: dict[str, FaceEngine], crops: list[np.ndarray], repeats: int = 40) -> dict:
    """CPU and wall ms/face at batch 1 of each served embedder, timed interleaved."""
    tensor = crop_tensor(crops[0])
    runs = {
        name: (lambda s=e.embedder.session, t=tensor: s.run(None, {s.get_inputs()[0].name: t}))
        for name, e in engines.items()
    }
    return bench_core.median_ms(runs, repeats)


def gate(fp32: dict, int8: dict) -> dict:
    accuracy_drop = fp32["accuracy"] - int8["accuracy"]
    tar_drop = fp32["tar_at_far"][GATE_FAR] - int8["tar_at_far"][GATE_FAR]
    return {
        "accuracy_drop_points": 100 * accuracy_drop,
        "tar_at_far_1e-6_drop_points": 100 * tar_drop,
        "limits_points": {"accuracy": 100 * MAX_ACCURACY_DROP, "tar_at_far_1e-6": 100 * MAX_TAR_DROP},
        "accepted": bool(accuracy_drop <= MAX_ACCURACY_DROP and tar_drop <= MAX_TAR_DROP),
    }


def run(data: Path, write: bool, workdir: Path, threads: int = 2) -> dict:
    model, quality = ModelSettings(threads=threads), QualitySettings()
    fp32 = default.build_default_bundle(workdir / "fp32")
    fp32 = default.fp32_view(fp32)  # when int8 is shipped already, compare against its fp32 graph
    fp32_engine = FaceEngine(fp32, model, quality)
    crops, names = calibration_crops(fp32_engine, data)
    ranges, int8_file = workdir / RANGES_FILE, workdir / "sface_int8.onnx"
    quantize_embedder(fp32.file(default.FP32_FILE), workdir / "measured.onnx", ranges, crops)
    quantize_embedder(fp32.file(default.FP32_FILE), int8_file, ranges)  # from the ranges alone, as at first start
    rebuilt = workdir / "rebuilt.onnx"
    quantize_embedder(fp32.file(default.FP32_FILE), rebuilt, ranges)
    int8 = int8_bundle(fp32, int8_file, workdir / "int8")
    engines = {"fp32": fp32_engine, "int8": FaceEngine(int8, model, quality)}
    lfw = data / "lfw_aligned_112"
    report: dict = {
        "onnxruntime": onnxruntime.__version__,
        "calibration_crops": {"sets": list(CALIBRATION_SETS), "count": len(crops), "files": names},
        "graph_sha256": sha256_file(int8_file),
        "deterministic": sha256_file(int8_file) == sha256_file(rebuilt),
        "ms_per_face_batch_1": speed(engines, crops),
        "lfw": {name: eval_lfw(engine, lfw, lfw / "pairs.txt") for name, engine in engines.items()},
    }
    report["gate"] = gate(report["lfw"]["fp32"], report["lfw"]["int8"])
    if report["gate"]["accepted"]:
        calibration = calibrate(engines["int8"], lfw, aligned=True, model_card=f"SFace 2021dec {GRAPH}")
        report["calibration"] = calibration.model_dump(mode="json")
        if write and report["deterministic"]:
            shutil.copy(ranges, PACKAGE / RANGES_FILE)
            shipped = {
                "source_sha256": default.SOURCE_SHA256[default.SFACE],
                "graph": GRAPH,
                "graph_sha256": report["graph_sha256"],
                "onnxruntime": report["onnxruntime"],
                "acceptance": report["gate"],
                "calibration": report["calibration"],
            }
            (PACKAGE / default.INT8_CALIBRATION_FILE).write_text(json.dumps(shipped, indent=2) + "\n")
    return report


def summary(report: dict) -> str:
    fp32, int8 = report["lfw"]["fp32"], report["lfw"]["int8"]
    speed_ms, g = report["ms_per_face_batch_1"], report["gate"]
    lines = [
        (
            f"onnxruntime {report['onnxruntime']}; {report['calibration_crops']['count']} calibration crops "
            f"({', '.join(report['calibration_crops']['sets'])}); int8 graph {report['graph_sha256'][:16]}, "
            f"deterministic: {report['deterministic']}"
        ),
        "| graph | LFW 10-fold % | TAR@1e-3 | TAR@1e-4 | TAR@1e-5 | TAR@1e-6 | CPU ms/face b1 | wall ms/face b1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("fp32", fp32), ("int8", int8)):
        tars = " | ".join(f"{100 * r['tar_at_far'][k]:.2f}" for k in ("1e-3", "1e-4", "1e-5", "1e-6"))
        lines.append(f"| {name} | {100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} | {tars} | "
                     f"{speed_ms[name]['cpu']:.2f} | {speed_ms[name]['wall']:.2f} |")  # fmt: skip
    lines.append(
        f"gate: accuracy drop {g['accuracy_drop_points']:.3f} points (<= 0.05), TAR@1e-6 drop "
        f"{g['tar_at_far_1e-6_drop_points']:.3f} points (<= 0.5): {'ACCEPTED' if g['accepted'] else 'REFUSED'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facelock_mqtt.tools.bench_quantize", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--write", action="store_true", help="ship the ranges and int8 calibration if accepted")
    parser.add_argument("--json", type=Path, help="write the full report to this file")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="facelock-quant-") as scratch:
        report = run(args.data, args.write, Path(scratch), args.threads)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
