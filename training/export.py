"""`export`: ONNX export, parity against PyTorch on real crops, and a bundle `facelock` serves.

The bundle pairs the trained embedder with the default bundle's YuNet detector, in the core's
manifest format (facelock_mqtt.models.bundle), with the calibration from `calibrate`. It is built in a
`.partial` folder and moved into place only after the parity check passed, so a failed export
never leaves a bundle behind. Galleries enrolled with another embedder must be re-enrolled: the
manifest fingerprint changes with the embedder file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelock_mqtt.models.bundle import (
    Bundle,
    Calibration,
    EmbedderSpec,
    InputSpec,
    Manifest,
    file_entry,
    load_bundle,
    write_bundle,
)
from facelock_mqtt.pipeline.embed import Embedder

from .config import ExportConfig
from .errors import ParityError
from .model import MEAN, STD, embed

log = logging.getLogger(__name__)

EMBEDDER_FILE = "embedder.onnx"
TRAINED_IDENTITIES = "trained_identities.json"
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")
# The backbone's input convention, stated in the manifest so the service feeds it the same way.
INPUT_SPEC = InputSpec(color="rgb", mean=MEAN, std=STD, size=(112, 112))


class Served(nn.Module):
    """The backbone plus the L2 normalisation the service expects."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x), dim=1)


def export_onnx(backbone: nn.Module, path: Path, opset: int) -> torch.onnx.ONNXProgram:
    """ONNX graph with a dynamic batch dimension, input NCHW float RGB normalised as INPUT_SPEC."""
    return onnx_export(Served(backbone).eval(), torch.zeros(1, 3, 112, 112), path, opset, ("input", "embedding"))


def onnx_export(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int, names: tuple[str, str]
) -> torch.onnx.ONNXProgram:
    """`module` as one ONNX file (weights inside) with a dynamic batch axis; `names`: input, output.

    torch.export-based exporter (onnxscript, in the training extra): the TorchScript one is
    deprecated since torch 2.9. It writes opset 18 or later (asked for 17, its down-conversion
    fails and leaves 18), hence ExportConfig.opset >= 18.
    """
    with _quiet(EXPORTER_LOGGERS), warnings.catch_warnings():
        # torch.export's own pytree code warns about its own internals (torch 2.13), not our graph.
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        return torch.onnx.export(
            module, (example,), str(path), dynamo=True, opset_version=opset, input_names=[names[0]],
            output_names=[names[1]], dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
            verbose=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """The exporter's own loggers at ERROR for the export: a line per graph rewrite otherwise."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def check_parity(backbone: nn.Module, bundle: Bundle, crops: np.ndarray, min_cosine: float) -> float:
    """Least cosine between PyTorch and the served ONNX embedding over real crops."""
    if len(crops) == 0:
        raise ParityError("no crops to check parity on")
    reference = embed(backbone, crops)
    served = Embedder(bundle, threads=1).embed(list(crops))
    cosines = np.sum(reference * served, axis=1)
    worst = float(cosines.min())
    if not worst >= min_cosine:  # also catches NaN
        raise ParityError(f"ONNX export differs from PyTorch: least cosine {worst:.6f} < {min_cosine} "
                          f"over {len(crops)} real crops; the bundle was not written")  # fmt: skip
    return worst


def export_bundle(backbone: nn.Module, detector_from: Bundle, calibration: Calibration | None, crops: np.ndarray,
                  cfg: ExportConfig, out: Path, version: str, model_card: Path | None = None,
                  trained_on: dict[str, list[str]] | None = None) -> tuple[Bundle, float]:  # fmt: skip
    """Write the bundle to `out` (replacing an older one) only if parity holds.

    `trained_on` (source -> identity folder names of the train split) goes into the bundle as
    TRAINED_IDENTITIES: an LFW evaluation of the bundle must leave those people's pairs out.
    """
    out = Path(out)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        export_onnx(backbone, stage / EMBEDDER_FILE, cfg.opset)
        detector_path = detector_from.file(detector_from.manifest.detector.file)
        shutil.copyfile(detector_path, stage / detector_path.name)
        if model_card is not None and model_card.is_file():
            shutil.copyfile(model_card, stage / "model_card.md")
        if trained_on is not None:
            (stage / TRAINED_IDENTITIES).write_text(json.dumps(trained_on, indent=1, sort_keys=True))
        manifest = Manifest(
            name=cfg.name,
            version=version,
            files={"detector": file_entry(stage, detector_path.name), "embedder": file_entry(stage, EMBEDDER_FILE)},
            detector=detector_from.manifest.detector.model_copy(update={"file": "detector"}),
            embedder=EmbedderSpec(file="embedder", input=INPUT_SPEC, embedding_size=backbone.embedding_size),
            calibration=calibration,
        )
        write_bundle(stage, manifest)
        worst = check_parity(backbone, load_bundle(stage), crops, cfg.min_cosine)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    stage.replace(out)
    log.info("bundle written to %s (parity: least cosine %.6f over %d crops)", out, worst, len(crops))
    return load_bundle(out), worst


def trained_identities(records: list) -> dict[str, list[str]]:
    """source -> the identity folder names (as the source names them) of the train split."""
    out: dict[str, set[str]] = {}
    for r in records:
        if r.split == "train":
            out.setdefault(r.source, set()).add(Path(r.original).parent.name)
    return {source: sorted(names) for source, names in out.items()}
