"""The ML activity gate: a tiny CNN that answers "is a person at the door?" for a whole frame.

The alternative to the pixel-change motion gate (`gate.py`), trained by
`training/activity_gate.py` and served from its own bundle (a folder with `manifest.json` and
the ONNX graph, SHA-256 checked): the frame is scaled to the network's small grey input
(64x64), and the gate passes while the person probability is at or above the bundle's
threshold, held `gate.hold_s` like the motion gate. It has the motion gate's interface
(`update(image, now)` -> GateResult, `stats`), so the door does not know which one it runs.

`BothGates` runs the motion gate first and asks the network only about frames it passed: the
network's cost is paid only on motion, and a light switched on or a moving shadow (which the
motion gate may take for motion) is vetoed by the network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from ..errors import BundleError, ImageError
from ..settings import GateSettings
from .gate import GateResult, GateStats, MotionGate, Polygon

MANIFEST = "manifest.json"
KIND = "activity_gate"


def preprocess(frame: np.ndarray, size: int) -> np.ndarray:
    """The network's input: grey, area-scaled to size x size, 0..1 float, NCHW (also used in training)."""
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        raise ImageError("activity gate: expected a non-empty 8-bit grey or BGR image")
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    small = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    return (small.astype(np.float32) / 255.0)[None, None]


class ActivityModel:
    """The exported network: person probability of one frame."""

    def __init__(self, folder: Path, threads: int = 1) -> None:
        folder = Path(folder)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise BundleError(f"activity gate {folder}: cannot read {MANIFEST} ({exc})") from exc
        if manifest.get("kind") != KIND:
            raise BundleError(f"activity gate {folder}: {MANIFEST} is not an activity-gate bundle")
        model = folder / manifest["model"]
        digest = hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None
        if digest != manifest["sha256"]:
            raise BundleError(f"activity gate {folder}: {model.name} is missing or does not match its SHA-256")
        self.manifest = manifest
        self.size = int(manifest["input_size"])
        self.threshold = float(manifest["threshold"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def probability(self, frame: np.ndarray) -> float:
        logit = float(self.session.run(None, {self.input: preprocess(frame, self.size)})[0].reshape(-1)[0])
        return float(1.0 / (1.0 + np.exp(-logit)))


class MlGate:
    """The activity network as a gate, held open `hold_s` after the last person-frame."""

    def __init__(self, settings: GateSettings, model: ActivityModel) -> None:
        self.settings, self.model = settings, model
        self._seen = self._passed = self._events = 0
        self._last: float | None = None
        self._present = False
        self.last_probability: float | None = None

    @property
    def stats(self) -> GateStats:
        return GateStats(self._seen, self._passed, self._events)

    def update(self, frame: np.ndarray, now: float) -> GateResult:
        self._seen += 1
        self.last_probability = self.model.probability(frame)
        present = self.last_probability >= self.model.threshold
        if present:
            self._last = now
            self._events += not self._present
        self._present = present
        passed = present or (self._last is not None and 0.0 <= now - self._last <= self.settings.hold_s)
        self._passed += passed
        return GateResult(motion=present, passed=passed, region=None, changed_fraction=0.0)


class BothGates:
    """Motion first; the network judges only what motion passed (and keeps the motion region)."""

    def __init__(self, motion: MotionGate, ml: MlGate) -> None:
        self.motion, self.ml = motion, ml
        self._seen = self._passed = 0

    @property
    def stats(self) -> GateStats:
        return GateStats(self._seen, self._passed, self.ml.stats.motion_events)

    def update(self, frame: np.ndarray, now: float) -> GateResult:
        self._seen += 1
        moved = self.motion.update(frame, now)
        if not moved.passed:
            return GateResult(motion=moved.motion, passed=False, region=None, changed_fraction=moved.changed_fraction)
        judged = self.ml.update(frame, now)
        self._passed += judged.passed
        region = moved.region if judged.passed else None
        return GateResult(moved.motion and judged.motion, judged.passed, region, moved.changed_fraction)


def build_gate(settings: GateSettings, mask: Sequence[Polygon] = (), threads: int = 1) -> MotionGate | MlGate | BothGates:
    """The gate `gate.kind` asks for; BundleError (at start) when its model cannot be loaded."""
    if settings.kind == "motion" or not settings.enabled:
        return MotionGate(settings, mask)
    ml = MlGate(settings, ActivityModel(settings.ml_model, threads))
    return ml if settings.kind == "ml" else BothGates(MotionGate(settings, mask), ml)
