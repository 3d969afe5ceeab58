"""Speed of the core models on this machine; prints numbers, asserts nothing.

- Embedder ms/face at batch 1 and 8: SFace as shipped (int8 block-quantised, only its weight
  inputs removed so onnxruntime runs it), the fp32-expanded file of the default bundle, that
  file with the PRelu rewrite (what fp32 serving runs), and the session `Embedder` actually
  serves (the int8 QDQ graph when the bundle serves it). All are timed in the same run,
  interleaved, so background load hits them alike.
- Detector ms/frame by detection size (longest side the frame is scaled to).

    python -m facelock_mqtt.tools.bench_core [--threads 2] [--repeats 30] [--json OUT] [--pack DIR]

Reported values are medians over repeats of wall time and of this process's CPU time (for the
embedder, divided by the batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..models.bundle import Bundle, load_bundle, open_session
from ..models.default_bundle import SFACE, default_bundle, fp32_view, verified_sources
from ..models.modelprep import clear_value_info, free_dims, keep_only_data_inputs
from ..pipeline.detect import load_detector
from ..pipeline.embed import Embedder
from ..pipeline.imageio import read_image

SHARED = Path(__file__).resolve().parents[3] / "shared"
BATCHES = (1, 8)
DETECT_SIZES = (160, 320, 480, 640)


def median_ms(runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, dict[str, float]]:
    """Median wall and process-CPU milliseconds of each callable, timed in turn.

    Interleaving makes background load hit every callable alike; CPU time (all threads of this
    process) is what the work costs, and is far less skewed by other processes than wall time.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {"wall": 1000 * statistics.median(wall[name]), "cpu": 1000 * statistics.median(cpu[name])}
        for name in runs
    }


def source_session(folder: Path, threads: int) -> ort.InferenceSession:
    """The shipped int8 block-quantised SFace, runnable and with a free batch dimension."""
    model = keep_only_data_inputs(onnx.load(str(verified_sources()[SFACE])))
    model = free_dims(clear_value_info(model), {0: "batch"}, {0: "batch"})
    path = folder / "sface_int8bq.onnx"
    onnx.save(model, str(path))
    return open_session(path, threads)


def sample_crops(count: int) -> list[np.ndarray]:
    """Real aligned LFW crops when the shared data is present, otherwise noise (speed is the same)."""
    lfw = SHARED / "data" / "lfw_aligned_112"
    files = sorted(lfw.glob("*/*.jpg"))[:count] if lfw.is_dir() else []
    if len(files) == count:
        return [read_image(f) for f in files]
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(count)]


def bench_embedder(
    bundle: Bundle, threads: int, repeats: int, int8: Bundle | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """ms/face of the shipped graph, of the bundle's fp32 file as it is and rewritten, of the
    int8 QDQ graph (`int8`: the default bundle built with int8=True) and of what Embedder serves."""
    served = Embedder(bundle, threads)
    fp32 = Embedder(fp32_view(bundle), threads)
    with tempfile.TemporaryDirectory() as folder:
        sessions = {
            "int8_block_quantised": source_session(Path(folder), threads),
            "fp32_expanded": bundle.session(fp32_view(bundle).manifest.embedder.file, threads),
            "fp32_prelu_rewritten": fp32.session,
            "served": served.session,
        }
        if int8 is not None:
            sessions["int8_qdq"] = Embedder(int8, threads).session
        results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in sessions}
        for batch in BATCHES:
            tensor = served._tensor(sample_crops(batch))  # the same input tensor for every graph
            runs = {
                name: (lambda s=session, t=tensor: s.run(None, {s.get_inputs()[0].name: t}))
                for name, session in sessions.items()
            }
            for name, ms in median_ms(runs, repeats).items():
                results[name][f"batch_{batch}"] = {kind: value / batch for kind, value in ms.items()}
    return results


def sample_frame() -> np.ndarray:
    frame = SHARED / "data" / "nuaa" / "live" / "s0001" / "0001_00_00_01_0.jpg"
    if frame.is_file():
        return read_image(frame)
    return np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)


def bench_detector(bundle: Bundle, threads: int, repeats: int) -> dict[str, dict[str, float]]:
    frame = sample_frame()
    detectors = {size: load_detector(bundle, threads, size, min_score=0.6) for size in DETECT_SIZES}
    runs = {f"size_{size}": (lambda d=detector: d.detect(frame)) for size, detector in detectors.items()}
    return median_ms(runs, repeats)


def measure(threads: int, repeats: int, data_dir: Path | None, pack: Path | None) -> dict:
    load_before = os.getloadavg()[0]  # other processes on the machine skew every number
    with tempfile.TemporaryDirectory() as scratch:
        bundle = default_bundle(data_dir or Path(scratch))
        report = {
            "threads": threads,
            "repeats": repeats,
            "cpu_count": os.cpu_count(),
            "embedder_ms_per_face": bench_embedder(bundle, threads, repeats),
            "detector_ms_per_frame": {"yunet": bench_detector(bundle, threads, repeats)},
        }
    if pack:
        report["detector_ms_per_frame"]["scrfd"] = bench_detector(load_bundle(pack), threads, repeats)
    report["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    return report


def print_report(report: dict) -> None:
    def cells(numbers: dict[str, dict[str, float]]) -> str:
        return "  ".join(f"{k}: {v['wall']:6.2f} ms (cpu {v['cpu']:6.2f})" for k, v in numbers.items())

    for graph, numbers in report["embedder_ms_per_face"].items():
        print(f"SFace {graph:<21} per face  {cells(numbers)}")
    for detector, numbers in report["detector_ms_per_frame"].items():
        print(f"{detector:<5} 640x480 frame  {cells(numbers)}")
    load = report["load_average_1min"]
    print(f"{report['threads']} thread(s), {report['repeats']} repeats, medians", end="; ")
    print(f"1-minute load average {load['before']:.1f} -> {load['after']:.1f} on {report['cpu_count']} cores")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facelock_mqtt.tools.bench_core", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads per model")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--data-dir", type=Path, help="where the default bundle is cached (default: a temp folder)")
    parser.add_argument("--pack", type=Path, help="also time this insightface pack's SCRFD detector")
    parser.add_argument("--json", type=Path, help="write the numbers to this file")
    args = parser.parse_args(argv)
    report = measure(args.threads, args.repeats, args.data_dir, args.pack)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
