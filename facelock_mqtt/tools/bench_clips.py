"""Synthetic door-camera footage for the benchmarks, made at run time from real NUAA frames.

A door scene is a fixed synthetic background (wall, door frame, floor) under slow lighting drift
with fresh sensor noise in every frame, so a real camera's "never twice the same frame" holds.
A visit pastes a person cut from consecutive real NUAA live frames into the scene: they slide in
from the side, stand (their own small movements come from the consecutive captures), and leave.
Clips are written as H.264 by the ffmpeg program when it is installed (Debian: `apt-get install
ffmpeg`), otherwise as MJPEG by OpenCV; the codec used is reported with every figure.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from ..errors import FaceLockError
from ..pipeline.av_source import available as av_available
from ..pipeline.imageio import read_image

WIDTH, HEIGHT = 640, 480  # NUAA frames are 640x480: the scene matches them
NOISE_SIGMA = 3.0  # grey levels; a cheap webcam indoors
DRIFT = 0.15  # lighting goes +-15 % over one cycle of the clip ("a day")
ENTER_S, STAY_S, LEAVE_S = 1.0, 4.0, 1.0


class BenchError(FaceLockError):
    """The benchmark cannot run here (missing data, a clip that cannot be written or read)."""


def session_frames(data: Path, identity: str, session: str) -> list[Path]:
    """NUAA live frames of one capture session, in capture order."""
    folder = data / "nuaa" / "live" / identity
    files = [p for p in folder.glob("*.jpg") if p.stem.split("_")[3] == session]
    if not files:
        raise BenchError(f"no NUAA live frames for {identity} session {session} under {folder}")
    return sorted(files, key=lambda p: int(p.stem.split("_")[-1]))


def background(width: int = WIDTH, height: int = HEIGHT, seed: int = 7) -> np.ndarray:
    """A plain, reproducible entrance: textured wall, darker door frame, floor band."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.normal(0, 12, (height, width)).astype(np.float32), (0, 0), 3)
    ramp = np.linspace(120, 170, width, dtype=np.float32)[None, :]
    grey = texture + ramp
    grey[int(0.85 * height) :] *= 0.6  # floor
    x0, x1 = int(0.3 * width), int(0.7 * width)
    grey[int(0.1 * height) :, x0 : x0 + 12] *= 0.5  # door frame
    grey[int(0.1 * height) :, x1 - 12 : x1] *= 0.5
    tint = np.array([0.95, 1.0, 1.05], np.float32)  # a warm cast, as indoor light has
    return np.clip(grey[..., None] * tint, 0, 255).astype(np.uint8)


class Scene:
    """Renders frames of a scene: background under a lighting gain, a pasted person, noise."""

    def __init__(self, base: np.ndarray, seed: int = 1) -> None:
        self.base = base
        self._noise = np.empty(base.shape, np.int16)
        cv2.setRNGSeed(seed)

    def render(self, gain: float, person: Placement | None = None) -> np.ndarray:
        frame = cv2.convertScaleAbs(self.base, alpha=gain)
        if person is not None:
            person.paste(frame)
        cv2.randn(self._noise, 0, NOISE_SIGMA)
        return cv2.add(frame, self._noise, dtype=cv2.CV_8U)


@dataclass(frozen=True)
class Placement:
    """A person patch at its place in the frame, shifted `dx` pixels (clipped at the edges)."""

    patch: np.ndarray
    x: int
    y: int
    dx: int = 0

    def paste(self, frame: np.ndarray) -> None:
        h, w = self.patch.shape[:2]
        x0 = self.x + self.dx
        fx0, fx1 = max(0, x0), min(frame.shape[1], x0 + w)
        if fx1 > fx0:
            frame[self.y : self.y + h, fx0:fx1] = self.patch[:, fx0 - x0 : fx1 - x0]

    @property
    def whole(self) -> bool:
        return self.dx == 0


def person_patches(paths: list[Path], box: np.ndarray) -> list[Placement]:
    """Cut the same rectangle (head and shoulders around `box`, x y w h) from each frame."""
    x, y, w, h = (float(v) for v in box)
    x0, x1 = int(max(0, x - 0.6 * w)), int(min(WIDTH, x + 1.6 * w))
    y0, y1 = int(max(0, y - 0.4 * h)), int(min(HEIGHT, y + 1.9 * h))
    placements = []
    for path in paths:
        image = read_image(path)
        if image.shape[:2] != (HEIGHT, WIDTH):
            image = cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
        placements.append(Placement(image[y0:y1, x0:x1].copy(), x0, y0))
    return placements


@dataclass(frozen=True)
class Visit:
    person: str  # NUAA identity
    enrolled: bool
    start: int  # first frame index of the visit (the person starts entering)
    frames: int  # frames from the first entering frame to the last leaving one
    first_whole: int  # first frame index where the whole face is in view


def visit_frames(placements: list[Placement], fps: float) -> list[Placement]:
    """The frames of one visit: slide in from the left, stand (ping-pong), slide out."""
    enter, stay, leave = (max(1, round(s * fps)) for s in (ENTER_S, STAY_S, LEAVE_S))
    width = placements[0].patch.shape[1] + placements[0].x
    cycle = placements + placements[-2:0:-1]
    out = [
        Placement(placements[0].patch, placements[0].x, placements[0].y, -width + width * i // enter)
        for i in range(enter)
    ]
    out += [cycle[i % len(cycle)] for i in range(stay)]
    last = cycle[(stay - 1) % len(cycle)]
    out += [Placement(last.patch, last.x, last.y, -width * (i + 1) // leave) for i in range(leave)]
    return out


@dataclass
class DoorDay:
    """A clip plan: frame count, fps and the visits, each with the frames it shows."""

    fps: float
    n_frames: int
    visits: list[Visit]
    shown: dict[int, Placement]  # frame index -> person placement (absent: empty scene)

    def gain(self, index: int) -> float:
        return 1.0 + DRIFT * math.sin(2 * math.pi * index / self.n_frames)

    def frames(self, scene: Scene) -> Iterator[np.ndarray]:
        for index in range(self.n_frames):
            yield scene.render(self.gain(index), self.shown.get(index))

    def visit_at(self, index: int) -> int | None:
        """Index of the visit whose frames (entering to leaving) include `index`."""
        for number, visit in enumerate(self.visits):
            if visit.start <= index < visit.start + visit.frames:
                return number
        return None


def plan_door_day(
    seconds: float, fps: float, visitors: list[tuple[str, bool, list[Placement]]], seed: int = 3
) -> DoorDay:
    """Visits spread over the clip (one per equal slot, at a random point of its slot)."""
    n_frames = round(seconds * fps)
    rng = np.random.default_rng(seed)
    slot = n_frames // max(1, len(visitors))
    visits, shown = [], {}
    for number, (person, enrolled, placements) in enumerate(visitors):
        frames = visit_frames(placements, fps)
        if len(frames) + 2 * fps > slot:
            raise BenchError(f"door day: {seconds} s is too short for {len(visitors)} visits")
        start = number * slot + int(rng.integers(fps, slot - len(frames) - fps + 1))
        first_whole = start + next(i for i, p in enumerate(frames) if p.whole)
        visits.append(Visit(person, enrolled, start, len(frames), first_whole))
        shown.update({start + i: p for i, p in enumerate(frames)})
    return DoorDay(fps, n_frames, visits, shown)


def ffmpeg_binary() -> str | None:
    return shutil.which("ffmpeg")


KEYFRAME_INTERVAL_S = 1.0  # a door camera's I-frame interval, as DOCS.md advises
SUB_SIZE = (320, 240)  # a camera's low-resolution second stream (gate_url) beside the 640x480 main one


def _write_clip_pyav(frames: Iterable[np.ndarray], path: Path, fps: float, size: tuple[int, int]) -> str:
    return write_clip_pair(frames, path, None, fps, size)


def write_clip_pair(
    frames: Iterable[np.ndarray], path: Path, sub_path: Path | None, fps: float, size: tuple[int, int],
    sub_size: tuple[int, int] = SUB_SIZE,
) -> str:  # fmt: skip
    """H.264 via PyAV at `size`, and when `sub_path` is given the same frames downscaled to
    `sub_size` as a camera's second stream would be (same timeline, same GOP); the codec."""
    import av

    gop = max(1, round(fps * KEYFRAME_INTERVAL_S))
    outputs = [(path, size)] + ([(sub_path, sub_size)] if sub_path is not None else [])
    containers = [av.open(str(p), "w", format="mp4") for p, _ in outputs]
    try:
        streams = []
        for container, (_, (width, height)) in zip(containers, outputs, strict=True):
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            # Low CRF keeps the sensor noise, so a still scene does not decode to repeated frames.
            stream.options = {"crf": "18", "preset": "veryfast", "g": str(gop), "bf": "0", "sc_threshold": "0"}
            streams.append(stream)
        for frame in frames:
            for container, stream, (_, out_size) in zip(containers, streams, outputs, strict=True):
                image = frame if out_size == size else cv2.resize(frame, out_size, interpolation=cv2.INTER_AREA)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        for container, stream in zip(containers, streams, strict=True):
            container.mux(stream.encode())
    finally:
        for container in containers:
            container.close()
    return f"h264 (libx264 via PyAV, keyframe every {gop} frames)"


def write_clip(frames: Iterable[np.ndarray], path: Path, fps: float, size: tuple[int, int]) -> str:
    """Write frames (BGR, `size` = width x height) as H.264 (PyAV, else the ffmpeg program), else
    MJPEG; the codec."""
    if av_available():
        return _write_clip_pyav(frames, path, fps, size)
    binary = ffmpeg_binary()
    if binary is None:
        writer = cv2.VideoWriter(str(path.with_suffix(".avi")), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        for frame in frames:
            writer.write(frame)
        writer.release()
        path.with_suffix(".avi").replace(path)
        return "mjpeg (opencv; install ffmpeg for h264)"
    # Low CRF keeps the sensor noise, so a still scene does not decode to repeated frames.
    command = [
        binary, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{size[0]}x{size[1]}",
        "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
        "-g", str(max(1, round(fps * KEYFRAME_INTERVAL_S))),
        "-pix_fmt", "yuv420p", "-f", "mp4", str(path),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for frame in frames:
            process.stdin.write(frame.tobytes())
    except BrokenPipeError:
        pass  # ffmpeg stopped early: its error message follows
    finally:
        process.stdin.close()
    if process.wait() != 0:
        raise BenchError(f"ffmpeg could not write {path}: {process.stderr.read().decode(errors='replace')}")
    return "h264 (libx264)"


def read_clip(path: Path) -> Iterator[np.ndarray]:
    """Every frame of a clip, decoded."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BenchError(f"cannot open the clip {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def decode_cpu_s(path: Path) -> tuple[float, int]:
    """CPU seconds (every thread of this process, the decoder's included) to decode the whole
    clip, and its frame count. Timed around the whole loop: a clock read per frame costs more
    than a small frame's gate work."""
    start, count = time.process_time(), 0
    for _ in read_clip(path):
        count += 1
    return time.process_time() - start, count
