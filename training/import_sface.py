"""Import the served SFace ONNX graph into PyTorch as a fine-tunable backbone.

SFace (OpenCV Zoo, 2021dec) is a plain chain: Sub/Mul input normalisation, 27 x
(Conv -> BatchNorm -> PReLU), a final BatchNorm, Dropout, Flatten, Gemm (fully connected) and a
BatchNorm on the 128-d output. A converter of our own (no onnx2torch: it pulls torchvision for
one NMS op this graph does not use) walks that chain, refuses any other op, and copies every
weight, so the PyTorch module computes what onnxruntime computes (tests: within 1e-5 on LFW
crops).

The graph normalises 0-255 RGB by (x - 127.5) * (1 / 128); training's `to_tensor` feeds exactly
(x - 127.5) / 128 (the same numbers: 1/128 is a power of two), so the module starts after the
normalisation and exports with training's INPUT_SPEC. The layer list (`spec`) is stored in every
checkpoint, so a fine-tuned backbone is rebuilt without the ONNX file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from .errors import TrainingError
from .model import MEAN, STD

SPEC_VERSION = 1


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _conv_spec(node: onnx.NodeProto, weight: np.ndarray) -> dict:
    a = _attrs(node)
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if pads[:2] != pads[2:] or list(a.get("dilations", [1, 1])) != [1, 1]:
        raise TrainingError(f"SFace import: conv {node.name} has asymmetric padding or dilation")
    return {"op": "conv", "cin": int(weight.shape[1] * a.get("group", 1)), "cout": int(weight.shape[0]),
            "k": int(weight.shape[2]), "stride": int(a.get("strides", [1, 1])[0]), "pad": int(pads[0]),
            "groups": int(a.get("group", 1))}  # fmt: skip


def read_graph(path: Path) -> tuple[list[dict], list[dict[str, np.ndarray]]]:
    """The layer spec and the weights of each layer, in order; TrainingError for any other graph."""
    model = onnx.load(str(path))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    # SFace's Dropout ratio arrives as a Constant node, not an initializer.
    init |= {n.output[0]: numpy_helper.to_array(_attrs(n)["value"]) for n in model.graph.node if n.op_type == "Constant"}
    spec: list[dict] = []
    weights: list[dict[str, np.ndarray]] = []
    for node in model.graph.node:
        op, ins = node.op_type, list(node.input)
        if op == "Sub":
            _expect(float(init[ins[1]].reshape(-1)[0]), MEAN, "input mean")
        elif op == "Mul":
            _expect(float(init[ins[1]].reshape(-1)[0]), 1.0 / STD, "input scale")
        elif op == "Conv":
            w = init[ins[1]]
            spec.append(_conv_spec(node, w))
            weights.append({"weight": w} | ({"bias": init[ins[2]]} if len(ins) > 2 else {}))
        elif op == "BatchNormalization":
            gamma, beta, mean, var = (init[n] for n in ins[1:5])
            spec.append({"op": "bn", "channels": int(gamma.shape[0]), "eps": float(_attrs(node).get("epsilon", 1e-5))})
            weights.append({"weight": gamma, "bias": beta, "running_mean": mean, "running_var": var})
        elif op == "PRelu":
            slope = init[ins[1]].reshape(-1)
            spec.append({"op": "prelu", "channels": int(slope.shape[0])})
            weights.append({"weight": slope})
        elif op == "Dropout":
            ratio = float(init[ins[1]].reshape(-1)[0]) if len(ins) > 1 and ins[1] else 0.5
            spec.append({"op": "dropout", "p": ratio})
            weights.append({})
        elif op == "Flatten":
            spec.append({"op": "flatten"})
            weights.append({})
        elif op == "Gemm":
            a = _attrs(node)
            if a.get("transB", 0) != 1 or a.get("transA", 0) != 0 or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise TrainingError("SFace import: Gemm must be x @ W^T + b")
            w = init[ins[1]]
            spec.append({"op": "linear", "cin": int(w.shape[1]), "cout": int(w.shape[0])})
            weights.append({"weight": w, "bias": init[ins[2]]})
        elif op == "Constant":
            continue  # read into `init` above
        else:
            raise TrainingError(f"SFace import: unsupported op {op} ({node.name}); this converter knows SFace's chain only")
    return spec, weights


def _expect(value: float, wanted: float, what: str) -> None:
    if abs(value - wanted) > 1e-9:
        raise TrainingError(f"SFace import: {what} is {value}, training feeds {wanted}")


def _layer(s: dict, after_linear: bool) -> nn.Module:
    op = s["op"]
    if op == "conv":
        return nn.Conv2d(s["cin"], s["cout"], s["k"], s["stride"], s["pad"], groups=s["groups"], bias=False)
    if op == "bn":
        return (nn.BatchNorm1d if after_linear else nn.BatchNorm2d)(s["channels"], eps=s["eps"])
    if op == "prelu":
        return nn.PReLU(s["channels"])
    if op == "dropout":
        return nn.Dropout(s["p"])
    if op == "flatten":
        return nn.Flatten(1)
    if op == "linear":
        return nn.Linear(s["cin"], s["cout"])
    raise TrainingError(f"unknown layer {op} in an SFace spec")


class SFaceNet(nn.Module):
    """SFace as a PyTorch module; input NCHW RGB (x - 127.5) / 128, output the un-normalised 128-d embedding."""

    def __init__(self, spec: list[dict]) -> None:
        super().__init__()
        layers, after_linear = [], False
        for s in spec:
            layers.append(_layer(s, after_linear))
            after_linear = after_linear or s["op"] == "linear"
        self.layers = nn.Sequential(*layers)
        self.spec = spec
        self.embedding_size = next(s["cout"] for s in reversed(spec) if s["op"] == "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def convs(self) -> list[int]:
        """Indices (into `layers`) of the conv layers, input side first: what freezing counts."""
        return [i for i, m in enumerate(self.layers) if isinstance(m, nn.Conv2d)]

    def freeze_first(self, n_convs: int) -> int:
        """Stop gradients for the first `n_convs` conv blocks (conv + BN + PReLU); returns frozen parameters."""
        convs = self.convs()
        if n_convs > len(convs):
            raise TrainingError(f"model.freeze_convs {n_convs}: SFace has {len(convs)} conv layers")
        end = convs[n_convs] if n_convs < len(convs) else len(self.layers)
        frozen = 0
        for module in list(self.layers)[: end if n_convs else 0]:
            for p in module.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
        return frozen


def load_weights(net: SFaceNet, weights: list[dict[str, np.ndarray]]) -> SFaceNet:
    for module, tensors in zip(net.layers, weights, strict=True):
        for name, value in tensors.items():
            target = getattr(module, name)
            source = torch.from_numpy(np.array(value, np.float32)).reshape(target.shape)  # a copy: writable
            with torch.no_grad():
                target.copy_(source)
    return net.eval()


def import_sface(path: Path) -> SFaceNet:
    """The SFace ONNX file at `path` as a PyTorch module in eval mode."""
    spec, weights = read_graph(Path(path))
    return load_weights(SFaceNet(spec), weights)
