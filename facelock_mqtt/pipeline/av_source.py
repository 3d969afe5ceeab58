"""Camera streams through PyAV, decoding only keyframes while the door is idle.

An idle camera's cost is its decoder: every frame of a still scene is decoded just for the
motion gate to say "nothing". While the door says it is idle (gate closed, no attempt), this
source feeds the decoder only keyframes and keeps the packets since the last one; the gate then
sees one frame per keyframe interval. When the door wakes up, the kept packets are decoded in
order (the decoder's references stay intact, so no frame is smeared), the newest is delivered at
once and every frame is decoded again. This is done only for streams whose keyframes come at
most MAX_KEYFRAME_GAP_S apart (measured on the stream): a camera with a long GOP is decoded in
full, as before. The first decision can come up to one keyframe interval later than with full
decoding, which is why it is off unless the camera's `idle_keyframes` is set. A camera with a
low-resolution sub-stream does better with `gate_url` (gate_stream.py).
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction

import numpy as np

from ..settings import CameraSettings
from .source import BACKOFF_START_S, NETWORK_TIMEOUT_MS, OpenCVSource, _Pace, _RateLimit, redact

log = logging.getLogger(__name__)

MAX_KEYFRAME_GAP_S = 1.0  # longer GOPs are decoded in full: the gate must not be blind longer
MAX_PENDING = 600  # packets kept per GOP at most (a stream that never sends a keyframe)


def available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class GopDecoder:
    """Decodes one video stream's packets; while `idle`, only keyframes (see the module doc)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.pending: list = []  # packets since the last keyframe that were not decoded
        self.last_key_s: float | None = None
        self.key_gap_s: float | None = None  # the stream's keyframe interval, once seen twice
        self.decoded = 0
        self.skipped = 0

    @property
    def can_idle(self) -> bool:
        return self.key_gap_s is not None and self.key_gap_s <= MAX_KEYFRAME_GAP_S

    def feed(self, packet, idle: bool) -> list:
        """The frames this packet yields: none for a packet kept back while idle, the kept-back
        frames and this one when the door has just woken up."""
        if packet.is_keyframe:
            self._keyframe_at(packet)
            self.pending = []
        elif idle and self.can_idle and len(self.pending) < MAX_PENDING:
            self.pending.append(packet)
            self.skipped += 1
            return []
        frames = []
        backlog, self.pending = self.pending, []
        for queued in [*backlog, packet]:
            decoded = queued.decode()
            self.decoded += 1
            frames.extend(decoded)
        return frames

    def _keyframe_at(self, packet) -> None:
        if packet.pts is None:
            return
        seconds = float(packet.pts * Fraction(packet.time_base))
        if self.last_key_s is not None and seconds > self.last_key_s:
            self.key_gap_s = seconds - self.last_key_s
        self.last_key_s = seconds


class _Container:
    """An open PyAV container with the `release()` the reconnect loop of OpenCVSource calls."""

    def __init__(self, container) -> None:
        self.container = container
        self.stream = container.streams.video[0]

    def release(self) -> None:
        self.container.close()


class AVSource(OpenCVSource):
    """A stream or video file decoded by PyAV; same life cycle, reconnects and stats as
    OpenCVSource, plus `set_idle()` for keyframe-only decoding while the door is idle."""

    def __init__(self, camera: CameraSettings, *, realtime: bool = True, backoff_s: float = BACKOFF_START_S) -> None:
        super().__init__(camera, realtime=realtime, backoff_s=backoff_s)
        self._idle = threading.Event()
        self.keyframe_gap_s: float | None = None

    def set_idle(self, idle: bool) -> None:
        """The door's state after each frame: idle = gate closed and no attempt under way; acted
        on only when the camera's `idle_keyframes` is set."""
        if idle and self.realtime and self.camera.idle_keyframes:  # replay delivers every frame
            self._idle.set()
        else:
            self._idle.clear()

    def _open(self):
        import av

        options = {"rtsp_transport": "tcp", "timeout": str(NETWORK_TIMEOUT_MS * 1000)} if self.network else {}
        try:
            return _Container(av.open(self.url, options=options, timeout=NETWORK_TIMEOUT_MS / 1000))
        except (av.error.FFmpegError, OSError, IndexError) as exc:  # IndexError: no video stream
            self._count("open_failures")
            self._error(f"cannot open {redact(self.url)}{self._file_problem()}: {exc}")
            return None

    def _pump(self, capture: _Container) -> int:
        import av

        limit = _RateLimit(self.camera.fps)
        rate = capture.stream.average_rate
        pace = (
            _Pace(float(rate) if rate and 1 <= rate <= 240 else self.camera.fps)
            if self.finite and self.realtime
            else None
        )
        decoder, delivered = GopDecoder(capture.stream), 0
        try:
            for packet in capture.container.demux(capture.stream):
                if self._stopping.is_set():
                    break
                if pace is not None and self._stopping.wait(pace.wait()):
                    break
                # The demuxer's last, empty packet flushes the frames the decoder still holds.
                frames = packet.decode() if packet.size == 0 else decoder.feed(packet, self._idle.is_set())
                delivered += self._frames(frames, limit)
                self.keyframe_gap_s = decoder.key_gap_s
        except av.error.FFmpegError as exc:  # a broken or dropped stream: reopened by _run
            self._error(f"stream error: {exc}")
        return delivered

    def _frames(self, frames: list, limit: _RateLimit) -> int:
        """Count the decoded frames and deliver the newest one that is due (a catch-up burst
        after waking up delivers only its last frame: the consumer wants the newest)."""
        now = time.monotonic()
        for _ in frames:
            self._count("frames_read")
        if not frames:
            self._count("frames_read")
            self._count("skipped")
            return 0
        for _ in frames[:-1]:
            self._count("skipped")
        if self.realtime and not limit.due(now):
            self._count("skipped")
            return 0
        frame = frames[-1]
        image = np.ascontiguousarray(frame.to_ndarray(format="bgr24"))
        self._count("frames_decoded")
        self._deliver(image, now, float(frame.time) if self.finite and frame.time is not None else None)
        return 1
