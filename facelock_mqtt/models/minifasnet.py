"""MiniFASNet (Silent-Face anti-spoofing) as an ONNX graph, built from a state dict with numpy.

The same network as `training/minifasnet.py` (which imports the width tables from here): a
MobileFaceNet-like stack of inverted-residual blocks (1x1 expand -> 3x3 depthwise -> 1x1 linear
projection) with pruned per-block widths, a squeeze-excitation on the last block of each
residual stage in the SE variant, a 5x5 global depthwise conv and a 3-class head (class 1 =
live). Input `input` (N, 3, 80, 80) float BGR 0..255, output `logits` (N, 3), dynamic batch.

Every BatchNorm is folded into the conv or linear layer before it (in float64), as PyTorch's
ONNX export does in eval mode. Loading is strict like `load_state_dict(strict=True)`: every key
the widths call for must be there with its exact shape, and no other key may be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import BundleError

INPUT_SIZE = 80
NUM_CLASSES = 3
EMBEDDING = 128
OPSET = 17
IR_VERSION = 8  # opset 17's IR: loads in every onnxruntime FaceLock supports
BN_EPS = 1e-5  # PyTorch's BatchNorm default, which Silent-Face kept


@dataclass(frozen=True)
class Widths:
    """Channel widths of one MiniFASNet variant, read off its state dict's weight shapes."""

    stem: int  # conv1 and conv2_dw
    down: tuple[tuple[int, int], ...]  # (expansion, output) of the three stride-2 blocks
    stages: tuple[tuple[int, ...], ...]  # expansion width of each residual block, per stage
    head: int  # conv_6_sep / conv_6_dw
    se: bool  # squeeze-excitation on the last block of each stage


V2 = Widths(
    stem=32,
    down=((103, 64), (231, 128), (308, 128)),
    stages=((13, 13, 13, 13), (231, 52, 26, 77, 26, 26), (26, 26)),
    head=512,
    se=False,
)
V1SE = Widths(
    stem=32,
    down=((103, 64), (231, 128), (308, 128)),
    stages=((13, 26, 13, 52), (154, 52, 26, 52, 26, 26), (26, 26)),
    head=512,
    se=True,
)
# File stem of each published weight file -> its widths (the crop scale is in guards.liveness).
VARIANTS = {"2.7_80x80_MiniFASNetV2": V2, "4_0_0_80x80_MiniFASNetV1SE": V1SE}


class _Builder:
    """Consumes state-dict entries (shape-checked) while emitting ONNX nodes and initializers."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        # Saved from nn.DataParallel: every key carries a `module.` prefix.
        self.state = {k.removeprefix("module."): v for k, v in state.items()}
        self.used: set[str] = set()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def param(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        value = self.state.get(key)
        if value is None:
            raise BundleError(f"missing weight {key}: not a MiniFASNet of this variant")
        if value.shape != shape or not np.issubdtype(value.dtype, np.floating):
            raise BundleError(f"weight {key} is {value.dtype}{list(value.shape)}, expected float{list(shape)}")
        self.used.add(key)
        return value.astype(np.float64)

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def batchnorm(self, prefix: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) with bn(x) == x * scale + shift in eval mode."""
        weight = self.param(f"{prefix}.weight", (channels,))
        bias = self.param(f"{prefix}.bias", (channels,))
        mean = self.param(f"{prefix}.running_mean", (channels,))
        var = self.param(f"{prefix}.running_var", (channels,))
        self.used.add(f"{prefix}.num_batches_tracked")  # a training counter, unused in eval
        scale = weight / np.sqrt(var + BN_EPS)
        return scale, bias - mean * scale

    def conv_bn(self, x: str, prefix: str, bn: str, c_in: int, c_out: int, kernel: int = 1, stride: int = 1,
                padding: int = 0, groups: int = 1) -> str:
        """Conv (no bias) with the BatchNorm `bn` folded in."""
        weight = self.param(f"{prefix}.weight", (c_out, c_in // groups, kernel, kernel))
        scale, shift = self.batchnorm(bn, c_out)
        w = self.const(f"{prefix}.weight", weight * scale[:, None, None, None])
        b = self.const(f"{prefix}.bias", shift)
        return self.node("Conv", [x, w, b], f"{prefix}.out", kernel_shape=[kernel, kernel], strides=[stride, stride],
                         pads=[padding] * 4, group=groups)

    def conv_block(self, x: str, prefix: str, c_in: int, c_out: int, kernel: int = 1, stride: int = 1,
                   padding: int = 0, groups: int = 1, linear: bool = False) -> str:
        """training.minifasnet.ConvBlock: conv + BN, then PReLU unless `linear`."""
        x = self.conv_bn(x, f"{prefix}.conv", f"{prefix}.bn", c_in, c_out, kernel, stride, padding, groups)
        if linear:
            return x
        slope = self.const(f"{prefix}.prelu.weight", self.param(f"{prefix}.prelu.weight", (c_out,)).reshape(-1, 1, 1))
        return self.node("PRelu", [x, slope], f"{prefix}.prelu.out")

    def squeeze_excite(self, x: str, prefix: str, channels: int, reduction: int = 4) -> str:
        """Global average -> 1x1 reduce (BN, ReLU) -> 1x1 expand (BN) -> sigmoid -> gate x."""
        inner = channels // reduction
        gate = self.node("ReduceMean", [x], f"{prefix}.mean", axes=[2, 3], keepdims=1)
        gate = self.conv_bn(gate, f"{prefix}.fc1", f"{prefix}.bn1", channels, inner)
        gate = self.node("Relu", [gate], f"{prefix}.relu")
        gate = self.conv_bn(gate, f"{prefix}.fc2", f"{prefix}.bn2", inner, channels)
        gate = self.node("Sigmoid", [gate], f"{prefix}.sigmoid")
        return self.node("Mul", [x, gate], f"{prefix}.out")

    def inverted_residual(self, x: str, prefix: str, c_in: int, expand: int, c_out: int, stride: int,
                          se: bool = False) -> str:
        y = self.conv_block(x, f"{prefix}.conv", c_in, expand)
        y = self.conv_block(y, f"{prefix}.conv_dw", expand, expand, 3, stride, 1, groups=expand)
        y = self.conv_block(y, f"{prefix}.project", expand, c_out, linear=True)
        if se:
            y = self.squeeze_excite(y, f"{prefix}.se_module", c_out)
        if stride == 1 and c_in == c_out:
            y = self.node("Add", [x, y], f"{prefix}.residual")
        return y

    def stage(self, x: str, prefix: str, channels: int, expansions: tuple[int, ...], se: bool) -> str:
        last = len(expansions) - 1
        for i, e in enumerate(expansions):
            x = self.inverted_residual(x, f"{prefix}.model.{i}", channels, e, channels, 1, se=se and i == last)
        return x

    def head(self, x: str, channels: int) -> str:
        """Flatten -> linear with BatchNorm1d folded in -> 3-class linear."""
        weight = self.param("linear.weight", (EMBEDDING, channels))
        scale, shift = self.batchnorm("bn", EMBEDDING)
        x = self.node("Flatten", [x], "flatten", axis=1)
        w = self.const("linear.weight", weight * scale[:, None])
        x = self.node("Gemm", [x, w, self.const("linear.bias", shift)], "linear.out", transB=1)
        prob = self.const("prob.weight", self.param("prob.weight", (NUM_CLASSES, EMBEDDING)))
        return self.node("Gemm", [x, prob], "logits", transB=1)


def build_onnx(state: Mapping[str, np.ndarray], w: Widths) -> onnx.ModelProto:
    """The ONNX model of the MiniFASNet variant `w` with the weights of `state` (strict)."""
    g = _Builder(state)
    (e23, c3), (e34, c4), (e45, c5) = w.down
    x = g.conv_block("input", "conv1", 3, w.stem, 3, 2, 1)
    x = g.conv_block(x, "conv2_dw", w.stem, w.stem, 3, 1, 1, groups=w.stem)
    x = g.stage(g.inverted_residual(x, "conv_23", w.stem, e23, c3, 2), "conv_3", c3, w.stages[0], w.se)
    x = g.stage(g.inverted_residual(x, "conv_34", c3, e34, c4, 2), "conv_4", c4, w.stages[1], w.se)
    x = g.stage(g.inverted_residual(x, "conv_45", c4, e45, c5, 2), "conv_5", c5, w.stages[2], w.se)
    x = g.conv_block(x, "conv_6_sep", c5, w.head)
    # 80 px in, four stride-2 steps -> 5x5 maps: a 5x5 depthwise conv pools them to 1x1.
    x = g.conv_block(x, "conv_6_dw", w.head, w.head, 5, groups=w.head, linear=True)
    g.head(x, w.head)
    unexpected = sorted(set(g.state) - g.used)
    if unexpected:
        raise BundleError(f"unexpected weights {', '.join(unexpected[:3])}: not a MiniFASNet of this variant")
    graph = helper.make_graph(
        g.nodes, "minifasnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facelock_mqtt")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
