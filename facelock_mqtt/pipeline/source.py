"""Frame sources: one per camera, each reading in a thread of its own into a one-frame mailbox.

A consumer always gets the newest frame: a frame not taken before the next one arrives is
dropped (and counted), so the recogniser never works through a backlog of old frames. In
replay mode (video files only) the reader instead waits for the consumer and every frame is
delivered in order, then `finished` turns true.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Self

import cv2
import numpy as np

from ..errors import ConfigError, ImageError
from ..settings import CameraSettings
from .imageio import MAX_PIXELS, decode_image

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
# OpenCV and FFmpeg print their own warnings straight to stderr, without the camera's name and
# once per broken frame; FaceLock logs each failure itself (named, rate-limited), so they are
# silenced unless the user set them or asked for debug logs. FFmpeg reads this at its first use.
FFMPEG_QUIET = "-8"  # AV_LOG_QUIET
NETWORK_TIMEOUT_MS = 5000  # open and read timeouts of network streams, so a dead camera is noticed
_DEVICE = re.compile(r"^(/dev/video\d+|\d+)$")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8
    ts: float  # time.monotonic() when the frame was captured (or its snapshot arrived)
    seq: int  # 1, 2, ... over the source's life; a gap means frames were dropped or skipped
    pts: float | None = None  # position in a video file, seconds; None for live sources
    gate_only: bool = False  # a frame of the camera's gate_url sub-stream: for the motion gate, never a decision


@dataclass(frozen=True)
class SourceStats:
    frames_read: int = 0  # frames (or snapshots) received from the camera
    frames_decoded: int = 0  # decoded into an image and offered to the consumer
    undecodable: int = 0  # received but could not be decoded; skipped
    skipped: int = 0  # received above the camera's fps; not decoded
    dropped: int = 0  # replaced by a newer frame before the consumer took it (stale)
    rate_limited: int = 0  # snapshots arriving faster than the topic's rate limit; not kept
    reconnects: int = 0  # successful reopenings after a drop or a failed open
    open_failures: int = 0  # attempts to open the camera that failed


class FrameSource(ABC):
    """Common life cycle: start(), latest(timeout), stop(); stats, finished, last_error."""

    def __init__(self, camera: CameraSettings, *, realtime: bool = True, backoff_s: float = BACKOFF_START_S) -> None:
        self.camera = camera
        self.realtime = realtime
        self._backoff_s = backoff_s
        self._backoff_max_s = max(backoff_s, camera.reconnect_max_s)
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._seq = 0
        self._ended = False
        self._stopping = threading.Event()
        self._counts = dict.fromkeys((f.name for f in fields(SourceStats)), 0)
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.camera.name

    @property
    def stats(self) -> SourceStats:
        with self._cond:
            return SourceStats(**self._counts)

    @property
    def finished(self) -> bool:
        """The source has ended (end of a file, or stopped) and its last frame has been taken."""
        with self._cond:
            return self._ended and self._slot is None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"camera {self.name}: source already started")
        self._thread = threading.Thread(target=self._main, name=f"facelock-source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("camera %s: reader still blocked after %.0f s; left to time out", self.name, timeout)

    def latest(self, timeout: float | None = None) -> Frame | None:
        """Take the newest frame, waiting up to `timeout` s; None on timeout or once finished."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._slot is not None or self._ended, timeout):
                return None
            frame, self._slot = self._slot, None
            self._cond.notify_all()  # a replay reader waits for the slot to empty
            return frame

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug must not pass silently; the source ends, the service sees it
            self._error(f"reader failed: {exc!r}")
            log.exception("camera %s: frame reader crashed", self.name)
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    @abstractmethod
    def _run(self) -> None:
        """Read until stopped (or, for a file, until its end)."""

    def _deliver(self, image: np.ndarray, ts: float, pts: float | None = None, gate_only: bool = False) -> None:
        with self._cond:
            if not self.realtime:
                self._cond.wait_for(lambda: self._slot is None or self._stopping.is_set())
            if self._stopping.is_set():
                return
            self._counts["dropped"] += self._slot is not None
            self._seq += 1
            self._slot = Frame(image, ts, self._seq, pts, gate_only)
            self._cond.notify_all()

    def _count(self, name: str) -> int:
        with self._cond:
            self._counts[name] += 1
            return self._counts[name]

    def _error(self, message: str) -> None:
        self.last_error = message
        log.warning("camera %s: %s", self.name, message)

    def _undecodable(self, why: str) -> None:
        count = self._count("undecodable")
        if count == 1 or count % 100 == 0:  # a broken stream must not flood the log
            self._error(f"undecodable frame skipped ({why}; {count} so far)")


class _RateLimit:
    """At most `fps` frames a second on a steady cadence, with no burst after a stall."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self.next_due = 0.0

    def due(self, now: float) -> bool:
        if now < self.next_due - self.period / 10:  # a little early is camera jitter, not excess
            return False
        self.taken(now)
        return True

    def taken(self, now: float) -> None:
        following = self.next_due + self.period
        self.next_due = following if following > now else now + self.period


class OpenCVSource(FrameSource):
    """Anything cv2.VideoCapture opens: rtsp:// or http:// (MJPEG) streams, /dev/videoN, a video
    file or an image-sequence pattern (frames/%04d.jpg).

    Streams and devices are reopened with a capped exponential backoff when they drop or fail
    to open. Files end: in realtime mode they play at their own frame rate (like a camera), in
    replay mode (realtime=False) every frame is delivered, as fast as the consumer takes them.
    """

    def __init__(self, camera: CameraSettings, *, realtime: bool = True, backoff_s: float = BACKOFF_START_S) -> None:
        if camera.url is None:
            raise ConfigError(f"camera {camera.name!r}: an OpenCV source needs a url")
        super().__init__(camera, realtime=realtime, backoff_s=backoff_s)
        quiet_backends()
        self.url = camera.url
        self.network = "://" in self.url
        self.finite = not self.network and not _DEVICE.match(self.url)
        if not self.realtime and not self.finite:
            raise ConfigError(f"camera {camera.name!r}: replay mode needs a video file, not {redact(self.url)}")

    def _run(self) -> None:
        delay, attempts = self._backoff_s, 0
        while True:
            capture = self._open()
            attempts += 1
            if capture is not None:
                if attempts > 1:
                    self._count("reconnects")
                try:
                    delivered = self._pump(capture)
                except cv2.error as exc:  # a backend failure is a dropped stream, not the end
                    self._error(f"stream error: {exc}")
                    delivered = 0
                finally:
                    capture.release()
                if self.finite or self._stopping.is_set():
                    return
                delay = self._backoff_s if delivered else delay
                self._error(f"stream ended or dropped; reopening in {delay:.1f} s")
            elif self.finite:
                return
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self._backoff_max_s)

    def _open(self) -> cv2.VideoCapture | None:
        reason = f"cannot open {redact(self.url)}{self._file_problem()}"
        try:
            capture = self._capture()
            if capture.isOpened():
                return capture
            capture.release()
        except cv2.error as exc:
            reason = f"{reason}: {exc}"
        self._count("open_failures")
        self._error(reason)
        return None

    def _file_problem(self) -> str:
        """Why a video file would not open, as a suffix of the log line ("" for streams)."""
        if not self.finite or "%" in self.url:
            return ""
        if not os.path.isfile(self.url):
            return ": no such file"
        return ": the file is empty" if os.path.getsize(self.url) == 0 else ": not a video OpenCV can decode"

    def _capture(self) -> cv2.VideoCapture:
        if self.network:
            # RTSP over TCP, as Frigate does: UDP loses packets and smears frames behind NAT/Docker.
            os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
            timeouts = (cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, cv2.CAP_PROP_READ_TIMEOUT_MSEC)
            params = [value for prop in timeouts for value in (prop, NETWORK_TIMEOUT_MS)]
            return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if self.url.isdigit():
            return cv2.VideoCapture(int(self.url))
        return cv2.VideoCapture(self.url)

    def _pump(self, capture: cv2.VideoCapture) -> int:
        """Read frames until the stream ends, drops or the source stops; return frames delivered."""
        limit = _RateLimit(self.camera.fps)
        pace = self._file_pace(capture) if self.finite and self.realtime else None
        delivered = 0
        while not self._stopping.is_set():
            if pace is not None and self._stopping.wait(pace.wait()):
                break
            if not capture.grab():  # a live stream must be read in full, or latency piles up
                break
            now = time.monotonic()
            self._count("frames_read")
            if self.realtime and not limit.due(now):
                self._count("skipped")
                continue
            try:
                ok, image = capture.retrieve()
            except cv2.error:
                ok, image = False, None
            if not ok or image is None or image.size == 0:
                self._undecodable("the decoder returned no image")
                continue
            self._count("frames_decoded")
            pts = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.finite else None
            self._deliver(image, now, pts)
            delivered += 1
        return delivered

    def _file_pace(self, capture: cv2.VideoCapture) -> _Pace:
        fps = capture.get(cv2.CAP_PROP_FPS)
        return _Pace(fps if math.isfinite(fps) and 1.0 <= fps <= 240.0 else self.camera.fps)


class _Pace:
    """Plays a file at its own frame rate, like a camera: wait() is the sleep before each frame."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self.start = time.monotonic()
        self.frames = 0

    def wait(self) -> float:
        due = self.start + self.frames * self.period
        self.frames += 1
        return max(0.0, due - time.monotonic())


class _TokenBucket:
    """`rate` tokens a second, up to `burst` saved: a steady camera always passes, a flood is cut
    to `rate`. Not thread-safe (the caller holds its lock)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class MqttSnapshotSource(FrameSource):
    """JPEG snapshots from an MQTT topic (e.g. Frigate's). The MQTT layer calls push(payload)
    from its network thread, which must stay free for other messages: push only rate-limits
    (RATE_FACTOR x fps per topic, counted as `rate_limited`) and keeps the newest payload; this
    source's thread checks the declared size and decodes it, at most `fps` times a second. It
    opens no connection of its own: reconnecting is the MQTT client's job."""

    RATE_FACTOR = 2.0  # snapshots taken per second at most: twice the fps leaves room for jitter
    BURST = 10.0  # a short burst (e.g. Frigate's on a new event) passes whole, so its newest frame wins

    def __init__(self, camera: CameraSettings) -> None:
        if camera.mqtt_topic is None:
            raise ConfigError(f"camera {camera.name!r}: an MQTT snapshot source needs mqtt_topic")
        super().__init__(camera, realtime=True)
        self._inbox: tuple[bytes, float] | None = None
        rate = self.RATE_FACTOR * camera.fps
        self._bucket = _TokenBucket(rate, burst=max(self.BURST, rate))

    def push(self, payload: bytes) -> None:
        """Hand over one snapshot; cheap and non-blocking, safe from any thread."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            self._count("frames_read")
            self._undecodable(f"payload of type {type(payload).__name__}, not bytes")
            return
        now = time.monotonic()
        with self._cond:
            self._counts["frames_read"] += 1
            if not self._bucket.take(now):
                self._counts["rate_limited"] += 1
                return  # not even copied: a flood costs as little as it can
            self._counts["dropped"] += self._inbox is not None
            self._inbox = (bytes(payload), now)
            self._cond.notify_all()

    def _run(self) -> None:
        # Spaced from the last snapshot taken, not on a fixed grid: a grid holds back every
        # snapshot of a camera whose clock runs a little fast by up to a whole period (measured
        # in `facelock bench` latency). Early by a tenth of a period is jitter, as in _RateLimit.
        spacing, taken = 0.9 / self.camera.fps, float("-inf")
        while not self._stopping.wait(max(0.0, taken + spacing - time.monotonic())):
            with self._cond:
                self._cond.wait_for(lambda: self._inbox is not None or self._stopping.is_set())
                if self._inbox is None:
                    return
                (payload, ts), self._inbox = self._inbox, None
            taken = time.monotonic()
            image, why = decode_jpeg(payload, self.camera.max_snapshot_pixels)
            if image is None:
                self._undecodable(why)
                continue
            self._count("frames_decoded")
            self._deliver(image, ts)


def decode_jpeg(payload: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, str]:
    """Decode a complete JPEG of at most `max_pixels` (its header says) into BGR; (None, reason)
    for anything else."""
    # OpenCV 4 returns a truncated JPEG grey-filled (5 refuses it): insist on both markers.
    if payload and (not payload.startswith(b"\xff\xd8") or not payload.rstrip(b"\x00\r\n").endswith(b"\xff\xd9")):
        return None, "not a complete JPEG (start or end marker missing)"
    try:
        return decode_image(payload, max_pixels), ""
    except (ImageError, cv2.error) as exc:
        return None, str(exc)


def quiet_backends() -> None:
    """Silence OpenCV's and FFmpeg's own stderr output, unless debugging (see FFMPEG_QUIET)."""
    if log.isEnabledFor(logging.DEBUG):
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def open_source(camera: CameraSettings, *, realtime: bool = True) -> FrameSource:
    """The source a camera's settings call for (not started)."""
    if camera.mqtt_topic is not None:
        return MqttSnapshotSource(camera)
    from . import av_source, gate_stream  # import this module

    # Streams and files played live with gate_url or idle_keyframes: PyAV, which then spares the
    # decoder while the door is idle. Everything else (replay included) keeps OpenCV's reader.
    pyav = realtime and not _DEVICE.match(camera.url or "") and av_source.available()
    if camera.gate_url is not None and pyav:
        return gate_stream.GateStreamSource(camera, realtime=realtime)
    if camera.gate_url is not None and realtime:
        log.warning("camera %s: gate_url needs PyAV (pip install av); url is decoded in full", camera.name)
    if camera.idle_keyframes and pyav:
        return av_source.AVSource(camera, realtime=realtime)
    return OpenCVSource(camera, realtime=realtime)


def redact(url: str) -> str:
    """The URL without its password, fit for logs (rtsp://user:secret@host -> rtsp://user:***@host)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)
