"""Install the liveness models: the two pinned Silent-Face weight files -> ONNX + `liveness.json`.

Runtime dependencies only (no PyTorch): each `.pth` is checked against its pinned SHA-256, read
by the restricted checkpoint reader (`models.checkpoint`), built into an ONNX graph
(`models.minifasnet`), run once by onnxruntime, and written with the manifest that
`liveness.LivenessModel.from_dir` verifies. Everything is written into a temporary folder next
to the target first: a failure leaves the target as it was.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..models import minifasnet
from ..models.bundle import open_session
from ..models.checkpoint import read_state_dict
from ..models.modelprep import sha256_file
from .liveness import MANIFEST, MODELS, WEIGHTS_URL, ModelSpec, download_weights, write_manifest

log = logging.getLogger(__name__)


def _read_pinned(weights: Path, spec: ModelSpec) -> bytes:
    """The bytes of `spec`'s weight file, read once so the digest checked is of what is parsed."""
    path = weights / spec.weights_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        hint = "get it with `facelock liveness download`"
        raise BundleError(f"cannot read {path}: {exc.strerror or exc} ({hint})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.weights_sha256:
        raise BundleError(
            f"{path} fails its SHA-256 check (expected {spec.weights_sha256[:12]}…, got {actual[:12]}…): "
            "not the published Silent-Face weights"
        )
    return data


def convert(data: bytes, spec: ModelSpec, target: Path) -> None:
    """Write `spec`'s ONNX model for the checkpoint `data` to `target`, after a trial run."""
    state = read_state_dict(data, spec.weights_file)
    model = minifasnet.build_onnx(state, minifasnet.VARIANTS[spec.name]).SerializeToString()
    batch = np.zeros((2, 3, minifasnet.INPUT_SIZE, minifasnet.INPUT_SIZE), np.float32)
    logits = open_session(model, threads=1).run(None, {"input": batch})[0]
    if logits.shape != (2, minifasnet.NUM_CLASSES) or not np.isfinite(logits).all():
        raise BundleError(f"{spec.name}: the converted model gives {logits.shape} non-finite or misshapen logits")
    target.write_bytes(model)


def _publish(staged: Path, out: Path) -> None:
    """Move the staged files into `out`: the whole folder when new, else file by file, manifest last."""
    if not out.exists():
        staged.rename(out)
        return
    # Models first, manifest last: until the new manifest lands, the old one refuses the new
    # files by digest (fail secure), never a mix that loads.
    for name in sorted(os.listdir(staged), key=lambda n: n == MANIFEST):
        os.replace(staged / name, out / name)


def install(weights: Path, out: Path) -> Path:
    """Convert the two pinned weight files in `weights` into the served models in `out`.

    Returns the manifest path. BundleError (one line) for a missing folder or file, a file that
    fails its SHA-256, or one that is not a MiniFASNet checkpoint; `out` is then left untouched.
    """
    weights, out = Path(weights), Path(out)
    if not weights.is_dir():
        raise BundleError(f"{weights} is not a folder holding the MiniFASNet .pth files")
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder")
    sources = [(spec, _read_pinned(weights, spec)) for spec in MODELS]
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged.chmod(0o755)  # published weights, not secrets: readable by whichever user serves them
        exported = []
        for spec, data in sources:
            convert(data, spec, staged / spec.onnx_file)
            exported.append((spec, spec.weights_sha256, sha256_file(staged / spec.onnx_file)))
        write_manifest(staged, exported)
        _publish(staged, out)
    except OSError as exc:
        raise BundleError(f"cannot write the liveness models to {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log.info("installed liveness models in %s", out)
    return out / MANIFEST


def download_and_install(dest: Path, out: Path, base_url: str = WEIGHTS_URL) -> Path:
    """Download the pinned weights into `dest` (SHA-256 checked), then `install` them into `out`."""
    download_weights(dest, base_url)
    return install(dest, out)
