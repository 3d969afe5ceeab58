"""`facelock collect`: frames of a camera or a replayed clip as an activity-gate dataset.

Each frame is auto-labelled by the two things FaceLock already trusts: the face detector and
the motion gate. `person`: the detector finds a face of at least quality.min_face_px; `lighting`:
the motion gate saw most of the frame change at once (a light switched, exposure); `motion`:
the gate saw motion but there is no face (shadows, headlights, rain, a back turned); `empty`:
no motion and no face. Only `person` is the positive class in training: a frame without a usable
face needs no face search, whatever moved. Frames are saved as the network sees them (grey,
64x64, lossless PNG) under `<out>/<label>/<session>_<index>.png`; a session is one clip or one
camera run, and training splits by session so that no clip is in two splits.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError
from ..pipeline.engine import FaceEngine
from ..pipeline.gate import MotionGate
from ..pipeline.ml_gate import preprocess
from ..pipeline.quality import face_size
from ..settings import GateSettings, QualitySettings

LABELS = ("person", "empty", "lighting", "motion")
INPUT_SIZE = 64
SUMMARY = "collect.json"


def label_frame(frame: np.ndarray, now: float, gate: MotionGate, engine: FaceEngine, settings: tuple[GateSettings, QualitySettings]) -> str:
    gate_settings, quality = settings
    result = gate.update(frame, now)
    if any(face_size(f) >= quality.min_face_px for f in engine.faces(frame)):
        return "person"
    if result.changed_fraction > gate_settings.lighting_fraction:
        return "lighting"
    return "motion" if result.passed else "empty"


def collect(
    frames: Iterable[np.ndarray], out: Path, session: str, engine: FaceEngine, gate: GateSettings,
    quality: QualitySettings, fps: float, every: int = 1,
) -> Counter:  # fmt: skip
    """Label and save every `every`-th frame (the gate sees them all); counts per label."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", session):
        raise ConfigError(f"collect: session {session!r} may hold only letters, digits, _ . -")
    for label in LABELS:
        (out / label).mkdir(parents=True, exist_ok=True)
    motion_gate = MotionGate(gate.model_copy(update={"kind": "motion", "ml_model": None}))
    counts: Counter = Counter()
    for index, frame in enumerate(frames):
        if index % every:
            motion_gate.update(frame, index / fps)
            continue
        label = label_frame(frame, index / fps, motion_gate, engine, (gate, quality))
        small = np.round(preprocess(frame, INPUT_SIZE)[0, 0] * 255.0).astype(np.uint8)  # exactly what the gate sees
        cv2.imwrite(str(out / label / f"{session}_{index:06d}.png"), small)
        counts[label] += 1
    summary_path = out / SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary[session] = dict(counts)
    summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return counts


def collect_videos(videos: list[Path], out: Path, engine: FaceEngine, gate: GateSettings, quality: QualitySettings,
                   fps: float, every: int) -> dict[str, dict[str, int]]:  # fmt: skip
    """`collect` on each video file, one session per file (named after it)."""
    from .bench_clips import read_clip

    result = {}
    for video in videos:
        if not video.is_file():
            raise ConfigError(f"collect: {video} does not exist")
        result[video.stem] = dict(collect(read_clip(video), out, video.stem, engine, gate, quality, fps, every))
        if not result[video.stem]:
            raise ConfigError(f"collect: no frame could be read from {video}")
    return result
