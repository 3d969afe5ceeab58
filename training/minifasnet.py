"""MiniFASNet (Silent-Face anti-spoofing) in PyTorch, and its export to ONNX for serving.

The network is written from the published state dicts' keys and shapes: a MobileFaceNet-like
stack of inverted-residual blocks (1x1 expand -> 3x3 depthwise -> 1x1 linear projection) with
pruned, per-block expansion widths, an optional squeeze-excitation on the last block of each
residual stage (the "SE" variant), a 5x5 global depthwise conv and a 3-class head (class 1 =
live). Input: (N, 3, 80, 80) float BGR in 0..255 (not divided by 255: the weights were trained so).

    python -m training.minifasnet export --weights DIR --out DIR

writes one ONNX file per model (opset 18, dynamic batch), checks each against PyTorch (softmax
outputs on a batch of inputs) and writes the manifest with SHA-256 digests that
`facelock_mqtt.guards.liveness` verifies before serving. Users do not need this: `facelock
liveness install` builds the same graph without PyTorch (`facelock_mqtt.models.minifasnet`);
this export is the reference the converter's parity test compares against.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from facelock_mqtt.guards import liveness
# The width tables live with the runtime converter, which builds the same graph without PyTorch
# (V2 and V1SE re-exported for the tests that build the PyTorch network).
from facelock_mqtt.models.minifasnet import EMBEDDING, INPUT_SIZE, NUM_CLASSES, V1SE, V2, VARIANTS, Widths

log = logging.getLogger(__name__)


class ConvBlock(nn.Module):
    """Conv (no bias) + BatchNorm, then PReLU unless `linear`."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, linear: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.prelu = None if linear else nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class SqueezeExcite(nn.Module):
    """Channel gate: global average -> 1x1 reduce (BN, ReLU) -> 1x1 expand (BN) -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels // reduction)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.relu(self.bn1(self.fc1(gate)))
        return x * torch.sigmoid(self.bn2(self.fc2(gate)))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; a shortcut when shapes allow."""

    def __init__(self, c_in: int, expand: int, c_out: int, stride: int, se: bool = False) -> None:
        super().__init__()
        self.conv = ConvBlock(c_in, expand)
        self.conv_dw = ConvBlock(expand, expand, 3, stride, 1, groups=expand)
        self.project = ConvBlock(expand, c_out, linear=True)
        self.se_module = SqueezeExcite(c_out) if se else None
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Stage(nn.Module):
    """A run of stride-1 residual blocks; the last one carries SE in the SE variant."""

    def __init__(self, channels: int, expansions: tuple[int, ...], se: bool) -> None:
        super().__init__()
        last = len(expansions) - 1
        self.model = nn.Sequential(
            *(InvertedResidual(channels, e, channels, 1, se=se and i == last) for i, e in enumerate(expansions))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """80x80 BGR face crop -> 3 logits (class 1 = live). Attribute names match the state dict."""

    def __init__(self, w: Widths) -> None:
        super().__init__()
        (e23, c3), (e34, c4), (e45, c5) = w.down
        self.conv1 = ConvBlock(3, w.stem, 3, 2, 1)
        self.conv2_dw = ConvBlock(w.stem, w.stem, 3, 1, 1, groups=w.stem)
        self.conv_23 = InvertedResidual(w.stem, e23, c3, 2)
        self.conv_3 = Stage(c3, w.stages[0], w.se)
        self.conv_34 = InvertedResidual(c3, e34, c4, 2)
        self.conv_4 = Stage(c4, w.stages[1], w.se)
        self.conv_45 = InvertedResidual(c4, e45, c5, 2)
        self.conv_5 = Stage(c5, w.stages[2], w.se)
        self.conv_6_sep = ConvBlock(c5, w.head)
        # 80 px in, four stride-2 steps -> 5x5 maps: a 5x5 depthwise conv pools them to 1x1.
        self.conv_6_dw = ConvBlock(w.head, w.head, 5, groups=w.head, linear=True)
        self.linear = nn.Linear(w.head, EMBEDDING, bias=False)
        self.bn = nn.BatchNorm1d(EMBEDDING)
        self.prob = nn.Linear(EMBEDDING, NUM_CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_dw(self.conv_6_sep(x)).flatten(1)
        return self.prob(self.bn(self.linear(x)))


def load_weights(path: Path) -> MiniFASNet:
    """Build the variant named by the file and load its state dict strictly (eval mode)."""
    widths = VARIANTS.get(path.stem)
    if widths is None:
        raise ValueError(f"{path.name}: unknown MiniFASNet weights (expected one of {sorted(VARIANTS)})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Saved from nn.DataParallel: every key carries a `module.` prefix.
    state = OrderedDict((k.removeprefix("module."), v) for k, v in state.items())
    model = MiniFASNet(widths)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_onnx(model: MiniFASNet, out: Path) -> None:
    """Write `model` as ONNX opset 18 with a dynamic batch axis (torch.export-based exporter)."""
    from .export import onnx_export

    onnx_export(model, torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE), out, 18, ("input", "logits"))


def parity(model: MiniFASNet, onnx_path: Path, batch: np.ndarray) -> float:
    """Largest absolute difference of softmax outputs, PyTorch vs onnxruntime, on `batch`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    got = liveness.softmax(session.run(None, {"input": batch})[0])
    return float(np.abs(expected - got).max())


def _parity_batch(seed: int = 0) -> np.ndarray:
    """Random 0..255 inputs of batch 4, to exercise the dynamic batch axis."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (4, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)


def export_all(weights: Path, out: Path, tolerance: float = 1e-4) -> Path:
    """Export both published models from `weights` into `out`; write and return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    exported = []
    for spec in liveness.MODELS:
        source = weights / spec.weights_file
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing (see docs/LIVENESS.md to download it)")
        model = load_weights(source)
        target = out / spec.onnx_file
        export_onnx(model, target)
        diff = parity(model, target, _parity_batch())
        if diff > tolerance:
            target.unlink()
            raise RuntimeError(f"{target.name}: ONNX differs from PyTorch by {diff:.2e} (> {tolerance:.0e})")
        log.info("exported %s (max softmax difference vs PyTorch %.1e)", target, diff)
        exported.append((spec, liveness.sha256_file(source), liveness.sha256_file(target)))
    return liveness.write_manifest(out, exported)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.minifasnet", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="export the MiniFASNet weights to ONNX with a manifest")
    export.add_argument("--weights", type=Path, required=True, help="folder holding the two .pth files")
    export.add_argument("--out", type=Path, required=True, help="folder to write the ONNX files and manifest into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        manifest = export_all(args.weights, args.out)
    except (OSError, ValueError, RuntimeError) as exc:
        log.error("export failed: %s", exc)
        return 1
    print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
