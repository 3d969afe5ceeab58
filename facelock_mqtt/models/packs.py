"""insightface model packs (buffalo_l / buffalo_s layout) read as bundles.

A pack is a folder with an SCRFD detector `det_*.onnx` and an ArcFace-style recognizer (the
`w600k_*.onnx` of buffalo packs, or any other ONNX file with a 112x112 input). It carries no
manifest: the digests are taken at load time and the folder is uncalibrated until
`facelock calibrate` writes a manifest into it.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from ..errors import BundleError
from .bundle import DetectorSpec, EmbedderSpec, InputSpec, Manifest, file_entry

# insightface's own preprocessing for SCRFD and for ArcFace graphs without a built-in normaliser.
SCRFD_INPUT = InputSpec(color="rgb", mean=127.5, std=128.0)
ARCFACE_INPUT = InputSpec(color="rgb", mean=127.5, std=127.5, size=(112, 112))


def _input_hw(model: onnx.ModelProto) -> tuple[int, int]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[2].dim_value, dims[3].dim_value


def _normalises_itself(model: onnx.ModelProto) -> bool:
    """Some ArcFace exports start with Sub/Mul nodes that normalise 0-255 input themselves."""
    head = [node.op_type for node in model.graph.node[:8]]
    return "Sub" in head and "Mul" in head


def pack_manifest(path: Path) -> Manifest:
    detectors = sorted(path.glob("det_*.onnx"))
    if not detectors:
        raise BundleError(f"{path} holds neither a manifest.json nor an insightface pack (det_*.onnx)")
    recognizers = []
    for candidate in sorted(path.glob("*.onnx")):
        if candidate in detectors:
            continue
        model = onnx.load(str(candidate), load_external_data=False)
        if _input_hw(model) == (112, 112):
            recognizers.append((candidate, model))
    if len(recognizers) != 1:
        found = ", ".join(c.name for c, _ in recognizers) or "none"
        raise BundleError(f"{path}: expected exactly one 112x112 recognizer ONNX file, found {found}")
    rec_path, rec_model = recognizers[0]
    embedding_size = rec_model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    rec_input = InputSpec(color="rgb", size=(112, 112)) if _normalises_itself(rec_model) else ARCFACE_INPUT
    return Manifest(
        name=f"pack-{path.name}",
        version="pack",
        files={"detector": file_entry(path, detectors[0].name), "embedder": file_entry(path, rec_path.name)},
        detector=DetectorSpec(kind="scrfd", file="detector", input=SCRFD_INPUT),
        embedder=EmbedderSpec(file="embedder", input=rec_input, embedding_size=embedding_size),
    )
