"""Presentation-attack detection: two Silent-Face MiniFASNet models plus a temporal cue.

Per frame, the face box is cropped at two scales (2.7x and 4x the box, Silent-Face's crop: the
box is enlarged around its centre, the scale capped so the crop fits the frame, then shifted
inside it) and resized to 80x80; each model's softmax gives a live probability and the two are
averaged (the "CNN score"). Across an attempt's frames, a held print moves as one plane: the
similarity map that carries its five landmarks from one frame to the next also carries the photo's
margin, the hands and the printed background around the face; a live head moves in front of a
background that stays put (`liveness_motion`). The two are fused
with weights and a threshold chosen on NUAA's training split (`liveness_calibration.json`,
written by `training/liveness_eval.py`), never with numbers typed into the code.

Models are served by onnxruntime from a folder holding the ONNX exports and `liveness.json`
(SHA-256 of each file, checked on load; a mismatch refuses the folder). Without that folder
FaceLock runs with liveness OFF and says so loudly. Users get the weights with
`download_weights()` and convert them, without PyTorch, with `liveness_install.install()`
(`facelock liveness download` does both).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import urllib.request
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import models as models_package  # the calibration data of every model lives there
from ..errors import BundleError, ImageError
from ..models.bundle import open_session, read_json_model, verify_digest, write_json_atomic
from ..models.modelprep import sha256_file
from .evidence_memo import EvidenceMemo
from .liveness_motion import FaceLike, face_motion, life_shift, pair_evidence, temporal_from_pairs

log = logging.getLogger(__name__)

MANIFEST = "liveness.json"
CALIBRATION_FILE = "liveness_calibration.json"
LIVE_CLASS = 1
INPUT_SIZE = 80
WEIGHTS_URL = "https://raw.githubusercontent.com/minivision-ai/Silent-Face-Anti-Spoofing/master/resources/anti_spoof_models/"
# A recognised attempt whose face has not moved yet may wait for frames up to this many: a live
# face moves within a few frames, a picture never does (at 10 fps with k = 2: at most 0.3 s more).
LIFE_MAX_FRAMES = 5
# Evidence kept: 3 pieces per frame, a few attempts' frames across doors; each keeps its frames alive.
REMEMBERED_EVIDENCE = 96
STATUS_OFF = "off: MiniFASNet models not installed (see docs/LIVENESS.md)"


@dataclass(frozen=True)
class ModelSpec:
    """One published MiniFASNet model: its weight file, digest and crop scale."""

    name: str
    scale: float
    weights_sha256: str

    @property
    def weights_file(self) -> str:
        return f"{self.name}.pth"

    @property
    def onnx_file(self) -> str:
        return f"{self.name}.onnx"


MODELS = (
    ModelSpec("2.7_80x80_MiniFASNetV2", 2.7, "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0"),
    ModelSpec("4_0_0_80x80_MiniFASNetV1SE", 4.0, "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990"),
)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestEntry(_Closed):
    name: str
    file: str
    scale: float = Field(gt=1.0, le=10.0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LivenessManifest(_Closed):
    format_version: int = 1
    models: tuple[ManifestEntry, ...]


class OperatingPoint(_Closed):
    """Fusion weights and threshold, chosen on data; `score >= threshold` means live."""

    threshold: float = Field(ge=0.0, le=1.0)
    temporal_weight: float = Field(ge=0.0, le=1.0)
    rigid_lift: float = Field(ge=-1.0, le=2.0, description="Surround lift above which a frame pair moved as a print.")
    min_motion: float = Field(gt=0.0, description="Landmark motion / eye distance below which there is no evidence.")
    min_life_motion: float = Field(
        gt=0.0,
        le=1.0,
        description="Face motion (face widths, liveness_motion.face_motion) below which the face did not move.",
    )
    chosen_on: str
    life_chosen_on: str = Field(description="How min_life_motion was measured (training/liveness_life.py).")
    weights_sha256: dict[str, str]
    measured: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class LivenessResult:
    live: bool
    score: float  # fused live score in [0, 1]
    cnn_score: float  # mean CNN live probability over the frames
    temporal_score: float | None  # None: too few frames or too little motion to judge
    reasons: tuple[str, ...]
    life_motion: float | None = None  # how far the face itself moved (face widths); None: not measurable


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def crop_face(image: np.ndarray, box: np.ndarray, scale: float, size: int = INPUT_SIZE) -> np.ndarray:
    """Silent-Face crop: `box` enlarged `scale` times about its centre, kept inside the frame."""
    height, width = image.shape[:2]
    x, y, w, h = (float(v) for v in box)
    if not (w >= 1 and h >= 1 and np.isfinite([x, y, w, h]).all()) or height < 2 or width < 2:
        raise ImageError(f"cannot crop a liveness patch for face box {np.round(box, 1).tolist()}")
    if not (0 <= x + w / 2 < width and 0 <= y + h / 2 < height):
        raise ImageError(f"face box {np.round(box, 1).tolist()} lies outside the {width}x{height} frame")
    # Cap the scale so the enlarged box fits the frame, as the models were trained.
    scale = min(scale, (height - 1) / h, (width - 1) / w)
    new_w, new_h = w * scale, h * scale
    left = float(np.clip(x + w / 2 - new_w / 2, 0, width - new_w))
    top = float(np.clip(y + h / 2 - new_h / 2, 0, height - new_h))
    patch = image[int(top) : int(top + new_h), int(left) : int(left + new_w)]
    if patch.size == 0:
        raise ImageError(f"face box {np.round(box, 1).tolist()} gives an empty liveness patch")
    return cv2.resize(patch, (size, size))


def read_manifest(folder: Path) -> LivenessManifest:
    return read_json_model(folder / MANIFEST, LivenessManifest, ": run `facelock liveness download`")


def write_manifest(folder: Path, exported: Sequence[tuple[ModelSpec, str, str]]) -> Path:
    """Write `liveness.json` for (spec, weights SHA-256, ONNX SHA-256) triples, atomically."""
    manifest = LivenessManifest(
        models=tuple(
            ManifestEntry(name=s.name, file=s.onnx_file, scale=s.scale, sha256=onnx_sha, weights_sha256=w_sha)
            for s, w_sha, onnx_sha in exported
        )
    )
    write_json_atomic(folder / MANIFEST, manifest)
    return folder / MANIFEST


def load_operating_point() -> OperatingPoint:
    """The shipped operating point (chosen on NUAA's training split by training/liveness_eval.py)."""
    text = resources.files(models_package).joinpath(CALIBRATION_FILE)
    try:
        return OperatingPoint.model_validate_json(text.read_bytes())
    except (FileNotFoundError, ValidationError) as exc:
        raise BundleError(f"liveness operating point {CALIBRATION_FILE} is missing or invalid: {exc}") from exc


def _verified_entry(folder: Path, manifest: LivenessManifest, spec: ModelSpec, point: OperatingPoint) -> Path:
    """The ONNX file for `spec`, after checking its digest and that the point was chosen for it."""
    entry = next((e for e in manifest.models if e.name == spec.name), None)
    if entry is None or entry.scale != spec.scale:
        raise BundleError(f"{folder / MANIFEST} does not list {spec.name} at scale {spec.scale}")
    if point.weights_sha256.get(spec.name) != entry.weights_sha256 or entry.weights_sha256 != spec.weights_sha256:
        raise BundleError(f"{spec.name} in {folder} was exported from other weights than the calibrated ones")
    path = folder / entry.file
    verify_digest(path, entry.sha256, "install the liveness models again (`facelock liveness install`)")
    return path


class LivenessModel:
    """The two MiniFASNet models, the temporal cue and the operating point that fuses them."""

    def __init__(self, sessions: Sequence[tuple[ModelSpec, object]], point: OperatingPoint) -> None:
        self.sessions = list(sessions)
        self.point = point
        # Evidence of recent attempt frames, taken beside their embedding (see `prepare`).
        self.memo = EvidenceMemo(REMEMBERED_EVIDENCE)
        # Two workers: two doors' faces at once; more would only queue for the same 2 cores.
        self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="liveness")

    @classmethod
    def from_dir(cls, folder: Path, threads: int = 1, point: OperatingPoint | None = None) -> LivenessModel:
        """Load and verify the exported models in `folder`; BundleError on anything amiss."""
        folder = Path(folder)
        point = point or load_operating_point()
        manifest = read_manifest(folder)
        sessions = [(spec, open_session(_verified_entry(folder, manifest, spec, point), threads)) for spec in MODELS]
        return cls(sessions, point)

    @property
    def status(self) -> str:
        names = " + ".join(f"{spec.name.rsplit('_', 1)[-1]}@{spec.scale:g}" for spec, _ in self.sessions)
        return f"on: {names}, threshold {self.point.threshold:.3f}"

    def cnn_scores(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Live probability of each model for one face (crop at each model's scale)."""
        scores = []
        for spec, session in self.sessions:
            patch = crop_face(image, box, spec.scale)
            # The weights expect raw 0-255 BGR, not scaled to 0-1.
            blob = patch.transpose(2, 0, 1)[None].astype(np.float32)
            scores.append(softmax(session.run(None, {"input": blob})[0])[0, LIVE_CLASS])
        return np.array(scores, dtype=np.float64)

    def cnn_score(self, image: np.ndarray, box: np.ndarray) -> float:
        """The fused CNN live probability of one face: the mean of both models' softmax (taken
        from the memo when this very frame and box were scored beside the embedding)."""
        return self.memo.get("cnn", (image,), (box,), lambda: float(self.cnn_scores(image, box).mean()))

    def pair(self, earlier: tuple[np.ndarray, FaceLike], later: tuple[np.ndarray, FaceLike]) -> tuple[float, float | None]:
        """`liveness_motion.pair_evidence` of two consecutive attempt frames, memoised."""
        return self.memo.get("pair", _images(earlier, later), _numbers(earlier, later), lambda: pair_evidence(earlier, later))

    def shift(self, first: tuple[np.ndarray, FaceLike], frame: tuple[np.ndarray, FaceLike]) -> float | None:
        """`liveness_motion.life_shift` of an attempt frame from the attempt's first, memoised."""
        return self.memo.get("shift", _images(first, frame), _numbers(first, frame), lambda: life_shift(first, frame))

    def prepare(self, frames: Sequence[tuple[np.ndarray, FaceLike]], image: np.ndarray, face: FaceLike) -> Future:
        """Start taking the evidence of a new attempt frame (after `frames`, the attempt's so far)
        on a worker, while the door embeds the face: the decision's `wants_more_frames` and
        `assess` then find it in the memo instead of running the CNN and the flow on the unlock's
        critical path. The door waits for the future before it decides; a frame that cannot be
        judged is left for `assess`, which refuses it and audits it."""
        earlier = (frames[0], frames[-1]) if frames else None
        return self._workers.submit(self._take, earlier, (image, face))

    def _take(self, earlier: tuple | None, frame: tuple[np.ndarray, FaceLike]) -> None:
        try:
            self.cnn_score(frame[0], frame[1].box)
            if earlier is not None:
                first, previous = earlier
                self.pair(previous, frame)
                self.shift(first, frame)
        except ImageError:
            return  # nothing kept: `assess` meets the same error and says spoof

    def close(self) -> None:
        """Stop the workers (the service's shutdown). `prepare` then raises, an error on the door's
        decision path (the door stays locked); `assess` still takes any missing evidence itself."""
        self._workers.shutdown(wait=True, cancel_futures=True)

    def assess(self, frames: Sequence[tuple[np.ndarray, FaceLike]]) -> LivenessResult:
        """Live or spoof for an attempt's frames (image, face), from the CNN and the motion.

        Fails secure: frames that cannot be judged (bad box, degenerate landmarks) are a spoof, and
        so is a face that did not move (a still picture fed as a stream), whatever the CNN says.
        """
        if not frames:
            return LivenessResult(False, 0.0, 0.0, None, ("no frames to judge",))
        try:
            cnn = float(np.mean([self.cnn_score(image, face.box) for image, face in frames]))
            pairs = [self.pair(a, b) for a, b in itertools.pairwise(frames)]
            temporal = temporal_from_pairs(pairs, self.point.min_motion, self.point.rigid_lift)
            life = face_motion(frames, self.shift)
        except ImageError as exc:
            return LivenessResult(False, 0.0, 0.0, None, (f"cannot judge liveness: {exc}",))
        return decide(cnn, temporal, life, self.point)

    def wants_more_frames(self, frames: Sequence[tuple[np.ndarray, FaceLike]]) -> bool:
        """Should the door wait for another frame before `assess`? Yes while the face has shown no
        evidence of life yet and fewer than LIFE_MAX_FRAMES frames were taken; frames that cannot
        be judged end the wait (`assess` then says spoof)."""
        if len(frames) >= LIFE_MAX_FRAMES:
            return False
        try:
            life = face_motion(frames, self.shift)
        except ImageError:
            return False
        return not life_reason(life, self.point)[0]


def _images(*frames: tuple[np.ndarray, FaceLike]) -> tuple[np.ndarray, ...]:
    return tuple(image for image, _ in frames)


def _numbers(*frames: tuple[np.ndarray, FaceLike]) -> tuple[np.ndarray, ...]:
    return tuple(n for _, face in frames for n in (face.box, face.landmarks))


def fuse(cnn: float, temporal: float | None, point: OperatingPoint) -> float:
    """The CNN score, discounted by the share of moving frame pairs that moved like a print.

    The temporal cue can only lower the score: surroundings moving with the face are evidence
    of a print, but a still background (or no motion) is no proof of life to outvote the CNN.
    """
    if temporal is None:
        return cnn
    return cnn * (1.0 - point.temporal_weight * (1.0 - temporal))


def life_reason(life: float | None, point: OperatingPoint) -> tuple[bool, str]:
    """(evidence of life, why): the face itself must move more than a still picture's noise does."""
    if life is None:
        return False, "no evidence of life: fewer than two comparable frames"
    if not life >= point.min_life_motion:  # NaN: no evidence
        why = f"no evidence of life: the face did not move ({life:.4f} < {point.min_life_motion:.4f} face widths)"
        return False, why
    return True, f"the face moved {life:.4f} face widths (>= {point.min_life_motion:.4f})"


def decide(cnn: float, temporal: float | None, life: float | None, point: OperatingPoint) -> LivenessResult:
    """Live only with evidence of life AND a fused score at the threshold: the CNN cannot outvote
    a face that never moved, and motion alone is no proof either (a moved print moves)."""
    score = fuse(cnn, temporal, point)
    alive, why = life_reason(life, point)
    live = alive and bool(score >= point.threshold)  # NaN compares False: not live
    reasons = [why] if not alive else []
    reasons.append(f"CNN live probability {cnn:.3f}")
    if temporal is None:
        reasons.append("too little motion for the temporal cue")
    elif temporal < 0.5:
        reasons.append(f"surroundings moved with the face like a held print (live-like share {temporal:.2f})")
    else:
        reasons.append(f"face moved against a still background (live-like share {temporal:.2f})")
    verdict = ">=" if score >= point.threshold else "<"  # the score's side; `live` also needs life
    reasons.append(f"liveness score {score:.3f} {verdict} threshold {point.threshold:.3f}")
    if alive:
        reasons.append(why)
    return LivenessResult(live, float(score), float(cnn), temporal, tuple(reasons), life)


def load_liveness(folder: Path | None, threads: int = 1) -> LivenessModel | None:
    """The liveness model in `folder`, or None (with a loud WARNING) when none is installed.

    A folder that holds models which fail their checks raises BundleError: a broken or tampered
    install stops the service at start rather than silently turning liveness off.
    """
    if folder is None or not (Path(folder) / MANIFEST).is_file():
        log.warning(
            # What that means for the door (denied by default, or unlocking without liveness when the
            # user opted out) is the service's to say: it knows `liveness.required`.
            "LIVENESS DETECTION IS OFF: no installed MiniFASNet models in %s "
            "(`facelock liveness install`, docs/LIVENESS.md).",
            folder,
        )
        return None
    model = LivenessModel.from_dir(Path(folder), threads)
    log.info("liveness %s", model.status)
    return model


def liveness_status(model: LivenessModel | None) -> str:
    """One line for the diagnostic sensor: whether liveness is on, and with what."""
    return STATUS_OFF if model is None else model.status


def _fetch(url: str, target: Path, timeout: float, max_bytes: int) -> None:
    """Download `url` into `target`, refusing anything larger than `max_bytes`."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        total = 0
        while chunk := response.read(1 << 16):
            total += len(chunk)
            if total > max_bytes:
                raise BundleError(f"{url} is larger than {max_bytes} bytes: not a MiniFASNet weight file")
            out.write(chunk)


def download_weights(dest: Path, base_url: str = WEIGHTS_URL, timeout: float = 60.0) -> list[Path]:
    """Download both Silent-Face weight files into `dest`, each checked against its SHA-256.

    Files already present with the right digest are kept. A file whose digest differs is never
    written under its final name. Convert them next with `liveness_install.install`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in MODELS:
        target = dest / spec.weights_file
        if target.is_file() and sha256_file(target) == spec.weights_sha256:
            written.append(target)
            continue
        url = base_url + spec.weights_file
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            partial = Path(tmp) / spec.weights_file
            try:
                _fetch(url, partial, timeout, max_bytes=50 * 1024 * 1024)
            except OSError as exc:  # URLError and socket timeouts are OSErrors
                raise BundleError(f"cannot download {url}: {exc}") from exc
            actual = sha256_file(partial)
            if actual != spec.weights_sha256:
                raise BundleError(
                    f"{url} fails its SHA-256 check (expected {spec.weights_sha256[:12]}…, got {actual[:12]}…)"
                )
            partial.replace(target)
        log.info("downloaded %s (SHA-256 verified)", target)
        written.append(target)
    return written
