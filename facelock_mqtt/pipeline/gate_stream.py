"""A camera read through two streams: a low-resolution `gate_url` for the motion gate while the
door is idle, the main `url` for everything else.

An idle camera's cost is decoding its main stream just for the gate to say "nothing". With a
gate_url (the same camera's sub-stream), while the door is idle every sub-stream frame is decoded
and handed on, its grey plane only, marked `gate_only` (the gate sees the scene at the full frame rate, so its
background learns as fast as with the main stream; the door never decides on such a frame), and
the main stream is only demuxed: its packets since the last keyframe are kept. When the door
wakes, the kept packets are decoded in order (the decoder's references stay intact, so the frame
is exactly what a full decode gives) and the newest main frame is delivered at once; the main
stream is then decoded in full until the door is idle again. The first main frame comes at most
one frame interval (plus that catch-up decode) after the motion frame.

The two streams are read in one thread, in the order of their timestamps (seconds from each
stream's first packet). Whatever goes wrong with the gate stream (cannot open, other aspect ratio
than url, an error, a stall longer than GATE_READ_TIMEOUT_S, its end, a clock jump between the
two, a main stream whose keyframes are too far apart to catch up quickly) falls back to decoding
url in full, logged once: the gate is never blind. The sub-stream should run at url's frame rate:
the gate's background learns per frame. url's own failures reconnect as for any stream, and the gate stream is
tried again with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from fractions import Fraction

import cv2
import numpy as np

from ..errors import ConfigError
from ..settings import CameraSettings
from .av_source import AVSource, _Container
from .source import BACKOFF_START_S, NETWORK_TIMEOUT_MS, _RateLimit, redact

log = logging.getLogger(__name__)

GATE_READ_TIMEOUT_S = 2.0  # a gate stream silent this long is stalled: url is decoded in full
MAX_CATCHUP_GOP_S = 2.0  # url keyframes further apart: catching up on waking would cost too long
MAX_SKEW_S = 2.0  # the streams' timestamps (from each one's start) drift further apart: a clock jump
ASPECT_TOLERANCE = 0.02  # the sub-stream shows the same view: its aspect ratio matches url's
_PLANAR_YUV = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21"}  # luma first
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
_LIMITED_TO_FULL = np.clip((np.arange(256) - 16) * 255.0 / 219.0 + 0.5, 0, 255).astype(np.uint8)


def seconds(packet) -> float | None:
    """The packet's decode time in seconds (None for the demuxer's final, empty packet)."""
    stamp = packet.dts if packet.dts is not None else packet.pts
    if stamp is None or packet.size == 0:
        return None
    return float(stamp * Fraction(packet.time_base))


class KeptGop:
    """The main stream while the gate stream stands in: packets demuxed, kept from the last
    keyframe on, and decoded in order when frames are wanted again."""

    def __init__(self) -> None:
        self.kept: list = []
        self.decoded = 0  # packets decoded
        self.demuxed_only = 0  # packets kept and later dropped at a keyframe, never decoded
        self.last_catchup: tuple[int, float] | None = None  # (packets, CPU ms) of the latest wake-up

    def keep(self, packet) -> None:
        """Idle: keep the packet (a keyframe starts a new list; the old one is never needed)."""
        if packet.is_keyframe:
            self.demuxed_only += len(self.kept)
            self.kept = []
        self.kept.append(packet)

    def span_s(self) -> float:
        """Seconds the kept packets cover: what catching up would have to decode."""
        if not self.kept:
            return 0.0
        first, last = seconds(self.kept[0]), seconds(self.kept[-1])
        return 0.0 if first is None or last is None else last - first

    def decode(self, packet) -> list:
        """Awake: the kept packets (a catch-up, timed) and this one, decoded in order."""
        backlog, self.kept = self.kept, []
        start = time.process_time()
        frames = []
        for queued in [*backlog, packet]:
            frames.extend(queued.decode())
            self.decoded += 1
        if backlog:
            self.last_catchup = (len(backlog), 1000 * (time.process_time() - start))
        return frames


def gate_image(frame) -> np.ndarray:
    """The frame's luma plane as a full-range grey image: what the motion gate makes of a BGR
    frame anyway, without converting the whole frame (that conversion cost as much as decoding
    the sub-stream). Never shown or analysed: only the gate sees it."""
    if frame.format.name not in _PLANAR_YUV:
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
    if frame.format.name.startswith("yuvj") or frame.color_range == _FULL_RANGE:
        return luma.copy()
    return cv2.LUT(luma, _LIMITED_TO_FULL)  # video range 16..235 to 0..255, as a BGR frame's grey


def single_threaded(stream) -> None:
    """Decode the small sub-stream in one thread: FFmpeg's default frame threads cost more CPU
    in hand-overs than they save on a 320x240 frame (0.30 vs 0.35 ms a frame, measured)."""
    stream.codec_context.thread_count = 1


def same_view(main, gate) -> bool:
    """The two video streams have the same aspect ratio (a sub-stream of the same camera)."""
    if not (main.width and main.height and gate.width and gate.height):
        return False
    return abs(main.width / main.height - gate.width / gate.height) <= ASPECT_TOLERANCE * main.width / main.height


class Interleave:
    """(is_gate, packet) from both demuxers in time order (main first on a tie, so a wake-up on a
    gate frame is answered by the next main frame, as it is live). A failure of the gate demuxer
    (or its end before url's) raises GateStreamFailed; `main_rest()` then goes on with url alone,
    from the first main packet not yet given out: none is lost, so url decodes unsmeared."""

    def __init__(self, main: Iterator, gate: Iterator) -> None:
        self._main, self._gate = main, gate
        self._origin: dict[bool, float] = {}  # each stream's first timestamp: live streams start apart
        self._last: dict[bool, float] = {}
        self._head: dict[bool, tuple[float, object] | None] = {}

    def __iter__(self) -> Iterator[tuple[bool, object]]:
        self._pull(False)
        self._pull(True)
        while self._head[False] is not None:
            main_at = self._head[False][0]
            if self._head[True] is None and main_at != float("inf"):  # url goes on without it
                raise GateStreamFailed("gate stream ended")
            gate_at = self._head[True][0] if self._head[True] is not None else None
            if gate_at is not None and main_at != float("inf") and abs(gate_at - main_at) > MAX_SKEW_S:
                # A clock jump: one stream would be read alone (the gate blind, or url starved).
                raise GateStreamFailed(f"the two streams' clocks are {abs(gate_at - main_at):.1f} s apart")
            is_gate = gate_at is not None and gate_at < main_at
            _, packet = self._head[is_gate]
            self._head[is_gate] = None
            yield is_gate, packet
            if is_gate or main_at != float("inf"):  # nothing comes after url's final, empty packet
                self._pull(is_gate)

    def main_rest(self) -> Iterator:
        if self._head.get(False) is not None:
            yield self._head[False][1]
            self._head[False] = None
        yield from self._main

    def _pull(self, is_gate: bool) -> None:
        import av

        try:
            packet = next(self._gate if is_gate else self._main, None)
        except (av.error.FFmpegError, OSError) as exc:
            if not is_gate:
                raise
            raise GateStreamFailed(f"gate stream error: {exc}") from exc
        if packet is None or packet.size == 0:  # the end: url's final, empty packet still flushes its decoder
            self._head[is_gate] = None if is_gate or packet is None else (float("inf"), packet)
            return
        at = seconds(packet)
        if at is None:  # an unstamped packet: it comes right after the one before it
            self._head[is_gate] = (self._last.get(is_gate, 0.0), packet)
            return
        self._origin.setdefault(is_gate, at)
        self._last[is_gate] = at - self._origin[is_gate]
        self._head[is_gate] = (self._last[is_gate], packet)


class GateStreamFailed(Exception):
    """The gate stream cannot stand in any more; url is decoded in full from here on."""


class DualStream:
    """The switch between the two streams, packet by packet, with no thread or clock of its own:
    GateStreamSource drives it live, `facelock bench` replays a clip through it."""

    def __init__(self, main: Iterator, gate: Iterator) -> None:
        self.packets = Interleave(main, gate)
        self.main = KeptGop()
        self.gate_problem: str | None = None  # why the gate stream was given up (None: in use)
        self.gate_decoded = 0  # gate stream packets decoded

    def frames(self, idle: Callable[[], bool], before: Callable[[object], bool]) -> Iterator[tuple[list, bool]]:
        """(decoded frames, gate_only) per packet. `idle()` is asked as each packet is taken
        (after `before(packet)`, which paces a file and returns True to stop): gate frames are
        handed on only while idle, main packets only kept while idle."""
        try:
            for is_gate, packet in self.packets:
                if before(packet):
                    return
                yield self._step(is_gate, packet, idle())
        except GateStreamFailed as exc:
            self.gate_problem = str(exc)
        else:
            return
        for packet in self.packets.main_rest():  # url alone from here, every packet decoded
            if before(packet):
                return
            yield (packet.decode() if packet.size == 0 else self.main.decode(packet)), False

    def _step(self, is_gate: bool, packet, idle: bool) -> tuple[list, bool]:
        import av

        if is_gate:
            try:  # every packet decoded (cheap), so its decoder is current for the next idle spell
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                raise GateStreamFailed(f"gate stream cannot be decoded: {exc}") from exc
            self.gate_decoded += 1
            return (frames if idle else []), True
        if idle and packet.size:
            self.main.keep(packet)
            if self.main.span_s() > MAX_CATCHUP_GOP_S:
                raise GateStreamFailed(f"url keyframes more than {MAX_CATCHUP_GOP_S:.0f} s apart")
            return [], False
        return (packet.decode() if packet.size == 0 else self.main.decode(packet)), False


class GateStreamSource(AVSource):
    """An AVSource with the camera's gate_url standing in for the motion gate while idle."""

    def __init__(self, camera: CameraSettings, *, realtime: bool = True, backoff_s: float = BACKOFF_START_S) -> None:
        if camera.gate_url is None:
            raise ConfigError(f"camera {camera.name!r}: a gate stream source needs gate_url")
        super().__init__(camera, realtime=realtime, backoff_s=backoff_s)
        self.gate_url = camera.gate_url
        self.gate_problem: str | None = None  # why the gate stream was last given up (None: in use)
        self.gate_frames = 0  # sub-stream frames handed to the door
        self.dual: DualStream | None = None  # the current connection's switch (None: url alone)
        self._main_seen = False  # a main frame went out on this connection (the gate learnt its size)
        self._gate_warned = False

    def set_idle(self, idle: bool) -> None:
        """The door's state after each frame; idle = gate closed and no attempt under way."""
        if idle and self.realtime:
            self._idle.set()
        else:
            self._idle.clear()

    def _pump(self, capture: _Container) -> int:
        import av

        self._main_seen, self.dual = False, None
        limit, before = _RateLimit(self.camera.fps), self._pacer()
        gate = self._open_gate(capture)
        main_packets = capture.container.demux(capture.stream)
        if gate is None:
            steps = self._main_only(main_packets, before)
        else:
            self.dual = DualStream(main_packets, gate.container.demux(gate.stream))
            steps = self.dual.frames(lambda: self._idle.is_set() and self._main_seen, before)
        delivered = 0
        try:
            for frames, gate_only in steps:
                if self._stopping.is_set():
                    break
                if self.dual is not None and self.dual.gate_problem and self.gate_problem is None:
                    self._give_up_gate(self.dual.gate_problem)
                if gate_only:
                    delivered += self._gate_frame(frames, limit)
                else:
                    delivered += self._main_frames(frames, limit)
        except av.error.FFmpegError as exc:  # url broken or dropped: reopened by _run, the gate with it
            self._error(f"stream error: {exc}")
        finally:
            if gate is not None:
                gate.release()
        return delivered

    @staticmethod
    def _main_only(packets: Iterator, before: Callable[[object], bool]) -> Iterator[tuple[list, bool]]:
        """url alone, every packet decoded: the gate stream could not be used on this connection."""
        for packet in packets:
            if before(packet):
                return
            yield packet.decode(), False

    def _open_gate(self, capture: _Container) -> _Container | None:
        import av

        network = "://" in self.gate_url
        options = {"rtsp_transport": "tcp", "timeout": str(int(GATE_READ_TIMEOUT_S * 1e6))} if network else {}
        try:
            gate = _Container(av.open(self.gate_url, options=options,
                                      timeout=(NETWORK_TIMEOUT_MS / 1000, GATE_READ_TIMEOUT_S)))  # fmt: skip
        except (av.error.FFmpegError, OSError, IndexError) as exc:  # IndexError: no video stream
            self._give_up_gate(f"cannot open gate_url {redact(self.gate_url)}: {exc}")
            return None
        if not same_view(capture.stream, gate.stream):
            main, sub = capture.stream, gate.stream
            gate.release()
            self._give_up_gate(f"gate_url is {sub.width}x{sub.height}, url {main.width}x{main.height}: "
                               "not the same view (aspect ratio)")  # fmt: skip
            return None
        single_threaded(gate.stream)
        self.gate_problem = None
        return gate

    def _give_up_gate(self, reason: str) -> None:
        """Fall back to decoding url in full: a warning the first time, quieter after."""
        (log.info if self._gate_warned else log.warning)("camera %s: %s; decoding url in full", self.name, reason)
        self.gate_problem, self._gate_warned = reason, True

    def _gate_frame(self, frames: list, limit: _RateLimit) -> int:
        if not frames or (self.realtime and not limit.due(time.monotonic())):
            return 0
        image = gate_image(frames[-1])
        self.gate_frames += 1
        self._count("frames_decoded")
        self._deliver(image, time.monotonic(), self._pts(frames[-1]), gate_only=True)
        return 1

    def _main_frames(self, frames: list, limit: _RateLimit) -> int:
        """Main frames as AVSource delivers them (a kept packet counts as read and skipped)."""
        delivered = self._frames(frames, limit)
        self._main_seen = self._main_seen or delivered > 0
        return delivered

    def _pts(self, frame) -> float | None:
        return float(frame.time) if self.finite and frame.time is not None else None

    def _pacer(self) -> Callable[[object], bool]:
        """before(packet) for DualStream: a file plays at its own pace, as a camera would (sleep
        until the packet's time); True once the source is stopping."""
        start = time.monotonic()

        def before(packet) -> bool:
            at = seconds(packet) if self.finite and self.realtime else None
            if at is None:
                return self._stopping.is_set()
            return self._stopping.wait(max(0.0, start + at - time.monotonic()))

        return before
