"""The ML activity gate: a tiny CNN that tells "a person is at the door" from a 64x64 grey frame.

Same chain as the face model, on the dataset `facelock collect` writes (<label>/<session>_<n>.png):
ingest (`load`) -> session-disjoint split (`split.assign`, sessions in place of identities: no
clip in two splits) -> overfit check (a handful of frames to near-zero loss, else a bug) ->
train (augmented: gain, gamma, noise, flips, shifts) -> evaluate (threshold chosen on val for
recall, reported on test) -> acceptance gate (recall, false positives, size, speed) -> export
(ONNX by `export.onnx_export`, a bundle of its own: manifest.json + activity_gate.onnx + model
card), served by facelock_mqtt/pipeline/ml_gate.py.

    python -m training.activity_gate clips --data ../shared/data --out runs/gate_clips
    facelock collect runs/gate_clips/*.mp4 --out runs/gate_data --every 2
    python -m training.activity_gate train --data runs/gate_data --out runs/activity_gate
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .export import onnx_export
from .split import assign

LABELS = ("person", "empty", "lighting", "motion")  # facelock_mqtt/tools/collect.py; person is positive
MODEL_FILE = "activity_gate.onnx"


class ActivityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 13
    ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)
    epochs: int = Field(8, ge=1)
    min_steps: int = Field(300, ge=1, description="Least optimiser steps, whatever the dataset's size.")
    batch: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(16, ge=4, description="Channels of the first convolution; doubled twice.")
    overfit_images: int = 32
    overfit_steps: int = 300
    overfit_loss: float = 0.05
    val_recall: float = Field(0.99, description="The threshold keeps this share of val person-frames.")
    min_test_recall: float = 0.97
    max_test_fpr: float = 0.10
    max_params: int = 100_000
    max_ms_per_frame: float = 0.5
    opset: int = 18


class TinyGate(nn.Module):
    """Four strided 3x3 convolutions (64 -> 4 px), global average, one logit."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        chans = (1, width // 2, width, 2 * width, 2 * width)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images N x 64 x 64 uint8, person 0/1, label index, session) of a collected dataset."""
    images, person, label, session = [], [], [], []
    for index, name in enumerate(LABELS):
        for path in sorted((folder / name).glob("*.png")):
            images.append(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
            person.append(name == "person")
            label.append(index)
            session.append(path.stem.rsplit("_", 1)[0])
    if not images or not any(person) or all(person):
        raise SystemExit(f"{folder}: needs frames of both a person and no person (facelock collect)")
    return np.stack(images), np.asarray(person, np.float32), np.asarray(label), np.asarray(session)


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting the camera may show: gain, gamma, noise; and a mirrored or shifted scene."""
    x = batch.astype(np.float32) / 255.0
    n = len(x)
    x = x ** rng.uniform(0.6, 1.6, (n, 1, 1)) * rng.uniform(0.5, 1.4, (n, 1, 1))
    x += rng.uniform(0, 0.06, (n, 1, 1)) * rng.standard_normal(x.shape)
    flip = rng.random(n) < 0.5
    x[flip] = x[flip, :, ::-1]
    shift = rng.integers(-4, 5, 2)
    x = np.roll(x, tuple(shift), axis=(1, 2))
    return np.clip(x, 0, 1).astype(np.float32)[:, None]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)


def overfit_check(images: np.ndarray, person: np.ndarray, cfg: ActivityConfig) -> float:
    """A fresh network must learn a handful of frames by heart; if not, the chain has a bug."""
    torch.manual_seed(cfg.seed)
    pick = np.r_[np.flatnonzero(person == 1)[: cfg.overfit_images // 2], np.flatnonzero(person == 0)[: cfg.overfit_images // 2]]
    net, x, y = TinyGate(cfg.width), to_tensor(images[pick]), torch.from_numpy(person[pick])[:, None]
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(cfg.overfit_steps):
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        final = float(nn.functional.binary_cross_entropy_with_logits(net(x), y))
    if final > cfg.overfit_loss:
        raise SystemExit(f"overfit check failed: loss {final:.3f} > {cfg.overfit_loss} on {len(pick)} frames")
    return final


def train(images: np.ndarray, person: np.ndarray, cfg: ActivityConfig) -> TinyGate:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = TinyGate(cfg.width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    steps = max(cfg.min_steps, cfg.epochs * (len(images) // cfg.batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=steps)
    weight = torch.tensor([(person == 0).sum() / max((person == 1).sum(), 1)], dtype=torch.float32)
    net.train()
    for _ in range(steps):
        pick = rng.integers(0, len(images), cfg.batch)
        x, y = torch.from_numpy(augment(images[pick], rng)), torch.from_numpy(person[pick])[:, None]
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y, pos_weight=weight)
        loss.backward()
        optimiser.step()
        schedule.step()
    return net.eval()


def probabilities(net: TinyGate, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(net(to_tensor(images))).numpy().ravel()


def choose_threshold(p: np.ndarray, person: np.ndarray, recall: float) -> float:
    """The highest threshold that keeps `recall` of the val person-frames (fewest false passes)."""
    positives = np.sort(p[person == 1])
    return float(positives[int(np.floor((1.0 - recall) * len(positives)))]) if len(positives) else 0.5


def evaluate(p: np.ndarray, person: np.ndarray, label: np.ndarray, threshold: float) -> dict:
    passed = p >= threshold
    per_label = {name: round(float(passed[label == i].mean()), 4) for i, name in enumerate(LABELS) if (label == i).any()}
    return {
        "frames": int(len(p)), "recall": round(float(passed[person == 1].mean()), 4),
        "fpr": round(float(passed[person == 0].mean()), 4), "passed_share_by_label": per_label,
    }  # fmt: skip


def ms_per_frame(model: Path, size: int = 64, frames: int = 300) -> float:
    """One-core onnxruntime latency of one frame, median of `frames` runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 1, size, size), np.float32)
    name = session.get_inputs()[0].name
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times[20:]))


def acceptance(test: dict, params: int, ms: float, cfg: ActivityConfig) -> list[str]:
    """Why the trained gate may not ship; empty when it passes."""
    reasons = []
    if test["recall"] < cfg.min_test_recall:
        reasons.append(f"test recall {test['recall']} < {cfg.min_test_recall}: it would miss visits")
    if test["fpr"] > cfg.max_test_fpr:
        reasons.append(f"test false positives {test['fpr']} > {cfg.max_test_fpr}")
    if params > cfg.max_params:
        reasons.append(f"{params} parameters > {cfg.max_params}")
    if ms > cfg.max_ms_per_frame:
        reasons.append(f"{ms:.3f} ms per frame > {cfg.max_ms_per_frame} on one core")
    return reasons


def export_bundle(net: TinyGate, out: Path, threshold: float, report: dict, cfg: ActivityConfig) -> Path:
    """activity_gate.onnx + manifest.json (what pipeline/ml_gate.py loads) + MODEL_CARD.md."""
    out.mkdir(parents=True, exist_ok=True)
    model = out / MODEL_FILE
    onnx_export(net, torch.zeros(1, 1, 64, 64), model, cfg.opset, ("frame", "logit"))
    manifest = {
        "kind": "activity_gate", "model": MODEL_FILE, "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "input_size": 64, "input": "grey, INTER_AREA-scaled, 0..1, NCHW", "threshold": threshold, "report": report,
    }  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(report))
    return out


def model_card(r: dict) -> str:
    rows = "\n".join(f"| {split} | {m['frames']} | {m['recall']} | {m['fpr']} | {m['passed_share_by_label']} |"
                     for split, m in r["metrics"].items())  # fmt: skip
    return (
        "# Activity gate model card\n\n"
        f"TinyGate (4 strided convolutions, {r['params']} parameters), 64x64 grey frames, trained in "
        f"{r['train_s']:.0f} s on CPU; {r['ms_per_frame']:.3f} ms per frame on one core (onnxruntime).\n\n"
        f"Data: {r['data']}; sessions per split {r['sessions']}; frames per label {r['labels']}.\n"
        f"Overfit check: loss {r['overfit_loss']:.4f}. Threshold {r['threshold']:.4f} (val recall target "
        f"{r['config']['val_recall']}).\n\n| split | frames | recall (person) | false positives | passed share by label |\n"
        f"|---|---|---|---|---|\n{rows}\n\nAcceptance: {'passed' if not r['refused'] else '; '.join(r['refused'])}\n"
    )


def run(data: Path, out: Path, cfg: ActivityConfig) -> dict:
    print(f"activity gate: {cfg.model_dump_json()}", flush=True)  # every setting, at start
    images, person, label, session = load(data)
    mapping = assign(sorted({str(s) for s in session}), cfg.ratios, cfg.seed)  # sessions, never frames, per split
    split = np.asarray([mapping[s] for s in session])
    overfit = overfit_check(images[split == "train"], person[split == "train"], cfg)
    start = time.process_time()
    net = train(images[split == "train"], person[split == "train"], cfg)
    train_s = time.process_time() - start
    parts = {name: split == name for name in ("train", "val", "test")}
    p = {name: probabilities(net, images[m]) for name, m in parts.items()}
    threshold = choose_threshold(p["val"], person[parts["val"]], cfg.val_recall)
    metrics = {name: evaluate(p[name], person[m], label[m], threshold) for name, m in parts.items()}
    params = sum(t.numel() for t in net.parameters())
    report = {
        "data": str(data), "config": cfg.model_dump(), "params": params, "train_s": train_s, "overfit_loss": overfit,
        "threshold": threshold, "metrics": metrics,
        "sessions": {name: sorted(k for k, v in mapping.items() if v == name) for name in parts},
        "labels": {name: int((label == i).sum()) for i, name in enumerate(LABELS)},
    }  # fmt: skip
    bundle = export_bundle(net, out, threshold, {**report, "ms_per_frame": 0.0, "refused": []}, cfg)
    report["ms_per_frame"] = ms_per_frame(bundle / MODEL_FILE)
    report["refused"] = acceptance(metrics["test"], params, report["ms_per_frame"], cfg)
    export_bundle(net, out, threshold, report, cfg)  # the manifest and card with the measured speed and verdict
    if report["refused"]:
        (out / "manifest.json").rename(out / "manifest.refused.json")  # a refused gate cannot be served
    return report


def write_clips(shared: Path, out: Path, seconds: float, visits: int) -> list[Path]:
    """The synthetic training clips (other people and entrances than the bench's)."""
    from facelock_mqtt.models.default_bundle import default_bundle
    from facelock_mqtt.pipeline.engine import FaceEngine
    from facelock_mqtt.settings import ModelSettings, QualitySettings
    from facelock_mqtt.tools.bench_clips import HEIGHT, WIDTH, write_clip
    from facelock_mqtt.tools.bench_gates import FPS, training_clips

    out.mkdir(parents=True, exist_ok=True)
    engine = FaceEngine(default_bundle(out / "bundle"), ModelSettings(), QualitySettings())
    paths = []
    for clip in training_clips(engine, shared, seconds, visits):
        path = out / f"{clip.name}.mp4"
        write_clip(clip.frames(), path, FPS, (WIDTH, HEIGHT))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.activity_gate", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    v = verbs.add_parser("clips", help="write the synthetic training clips")
    v.add_argument("--data", type=Path, required=True, help="the shared data folder (NUAA live frames)")
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--seconds", type=float, default=240.0)
    v.add_argument("--visits", type=int, default=8)
    v = verbs.add_parser("train", help="split, overfit check, train, evaluate, gate, export")
    v.add_argument("--data", type=Path, required=True, help="a `facelock collect` folder")
    v.add_argument("--out", type=Path, required=True, help="the bundle folder to write")
    v.add_argument("--config", type=Path, help="JSON overrides of ActivityConfig (training/configs/activity_gate.json)")
    args = parser.parse_args(argv)
    if args.verb == "clips":
        print("\n".join(str(p) for p in write_clips(args.data, args.out, args.seconds, args.visits)))
        return 0
    cfg = ActivityConfig.model_validate_json(args.config.read_text()) if args.config else ActivityConfig()
    report = run(args.data, args.out, cfg)
    print(json.dumps({k: report[k] for k in ("params", "train_s", "threshold", "metrics", "ms_per_frame", "refused")}, indent=2))
    return 1 if report["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
