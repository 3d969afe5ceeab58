"""Frame sources on real video: a clip written from real photographs, a live MJPEG server that
is killed and restarted, JPEG snapshots over a real Mosquitto broker, and broken input."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from facelock_mqtt.errors import ConfigError
from facelock_mqtt.pipeline.source import (
    Frame,
    MqttSnapshotSource,
    OpenCVSource,
    open_source,
    redact,
)
from facelock_mqtt.settings import CameraSettings

CLIP_FPS = 20.0


@pytest.fixture(scope="module")
def photos(shared_data: Path) -> list[np.ndarray]:
    """Distinct 640x480 webcam frames: every 8th of the NUAA live set spans several people."""
    files = sorted((shared_data / "nuaa/live").glob("*/*.jpg"))[::8][:24]
    images = [cv2.imread(str(f)) for f in files]
    assert len(images) == 24 and all(i is not None and i.shape == (480, 640, 3) for i in images)
    return images


def write_clip(path: Path, photos: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), CLIP_FPS, (640, 480))
    assert writer.isOpened()
    for image in photos:
        writer.write(image)
    writer.release()
    return path


@pytest.fixture
def clip(tmp_path: Path, photos: list[np.ndarray]) -> Path:
    return write_clip(tmp_path / "door.avi", photos)


def camera(url: str | None = None, topic: str | None = None, **extra) -> CameraSettings:
    return CameraSettings(name="front_door", url=url, mqtt_topic=topic, **extra)


def which_photo(image: np.ndarray, photos: list[np.ndarray]) -> int:
    """Index of the photo a decoded (lossy) frame shows."""
    errors = [cv2.norm(image, p, cv2.NORM_L1) for p in photos]
    return int(np.argmin(errors))


def drain(source, timeout: float = 10.0) -> list[Frame]:
    frames = []
    while not source.finished:
        frame = source.latest(timeout)
        if frame is not None:
            frames.append(frame)
    return frames


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.02)


def test_replay_delivers_every_frame_in_order(clip: Path, photos: list[np.ndarray]) -> None:
    with OpenCVSource(camera(clip.as_posix(), fps=1.0), realtime=False) as source:
        frames = []
        while not source.finished:
            frame = source.latest(10)
            if frame is not None:
                frames.append(frame)
                time.sleep(0.01)  # a slow consumer: replay must wait for it, not drop
    assert [which_photo(f.image, photos) for f in frames] == list(range(len(photos)))
    assert [f.seq for f in frames] == list(range(1, len(photos) + 1))
    assert [f.pts for f in frames] == sorted(f.pts for f in frames)
    stats = source.stats
    assert stats.frames_read == stats.frames_decoded == len(photos)
    assert stats.dropped == stats.skipped == stats.undecodable == 0
    assert source.latest(0.1) is None


def test_live_mode_gives_the_newest_frame_only(clip: Path, photos: list[np.ndarray]) -> None:
    with OpenCVSource(camera(clip.as_posix(), fps=60.0)) as source:
        seen = []
        while not source.finished:
            frame = source.latest(10)
            if frame is not None:
                seen.append(frame)
                time.sleep(0.2)  # a consumer slower than the camera
    stats = source.stats
    assert stats.dropped > 0 and len(seen) < len(photos)
    assert len(seen) + stats.dropped == stats.frames_decoded
    assert stats.frames_decoded + stats.skipped == stats.frames_read == len(photos)
    indexes = [which_photo(f.image, photos) for f in seen]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)
    seqs = [f.seq for f in seen]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] > len(seqs) - 1  # gaps: stale frames dropped


def test_live_mode_is_rate_limited_to_camera_fps(clip: Path) -> None:
    with OpenCVSource(camera(clip.as_posix(), fps=5.0)) as source:
        frames = drain(source)
    stats = source.stats
    assert stats.skipped > 0
    assert stats.frames_read == stats.frames_decoded + stats.skipped == 24
    assert len(frames) + stats.dropped == stats.frames_decoded


def test_image_sequence_pattern(tmp_path: Path, photos: list[np.ndarray]) -> None:
    for i, image in enumerate(photos[:5]):
        cv2.imwrite(str(tmp_path / f"{i:04d}.jpg"), image)
    with OpenCVSource(camera((tmp_path / "%04d.jpg").as_posix()), realtime=False) as source:
        frames = drain(source)
    assert [which_photo(f.image, photos) for f in frames] == [0, 1, 2, 3, 4]


def test_garbage_video_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    with OpenCVSource(camera(garbage.as_posix()), realtime=False) as source:
        assert drain(source) == []
    assert source.stats.open_failures == 1 and source.stats.frames_decoded == 0
    assert "cannot open" in source.last_error


def test_truncated_video_file_ends_cleanly(clip: Path, photos: list[np.ndarray]) -> None:
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) * 6 // 10])
    with OpenCVSource(camera(clip.as_posix()), realtime=False) as source:
        frames = drain(source)
    assert 0 < len(frames) < len(photos)
    assert all(f.image.shape == (480, 640, 3) for f in frames)
    assert [which_photo(f.image, photos) for f in frames[:-1]] == list(range(len(frames) - 1))
    assert source.stats.frames_decoded + source.stats.undecodable <= len(photos)


def test_stop_releases_a_replay_reader_waiting_for_the_consumer(clip: Path) -> None:
    source = OpenCVSource(camera(clip.as_posix()), realtime=False)
    source.start()
    assert source.latest(10) is not None
    wait_until(lambda: source.stats.frames_decoded >= 2)  # the reader now waits on a full slot
    source.stop()
    source.latest(0)  # the frame left in the slot, if any
    assert source.finished
    assert source.stats.frames_decoded < 24


class MjpegServer:
    """A tiny MJPEG-over-HTTP camera (multipart/x-mixed-replace) that can be killed and restarted."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self.jpegs = jpegs
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        self.stopped = stopped = threading.Event()
        jpegs = self.jpegs

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = 0
                while not stopped.is_set():
                    jpeg = jpegs[count % len(jpegs)]
                    count += 1
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg)
                    try:
                        self.wfile.write(head + jpeg + b"\r\n")
                    except OSError:  # the client went away: this connection is over
                        return
                    stopped.wait(1 / 25)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


@pytest.fixture
def mjpeg_server(photos: list[np.ndarray]) -> Iterator[MjpegServer]:
    server = MjpegServer([cv2.imencode(".jpg", p)[1].tobytes() for p in photos[:6]])
    server.start()
    yield server
    if not server.stopped.is_set():
        server.stop()


def test_dropped_stream_is_reopened_with_backoff(mjpeg_server: MjpegServer, photos: list[np.ndarray]) -> None:
    source = OpenCVSource(camera(mjpeg_server.url, fps=30.0, reconnect_max_s=1.0), backoff_s=0.1)
    with source:
        first = source.latest(10)
        assert first is not None and which_photo(first.image, photos) < 6
        mjpeg_server.stop()
        wait_until(lambda: source.stats.open_failures >= 2)  # it keeps trying while the camera is down
        assert source.stats.reconnects == 0
        before = source.stats.frames_decoded
        mjpeg_server.start()  # same port
        wait_until(lambda: source.stats.reconnects == 1 and source.stats.frames_decoded > before + 3)
        again = source.latest(10)
        assert again is not None and again.seq > first.seq and which_photo(again.image, photos) < 6
        assert not source.finished
    assert source.finished


def test_network_source_cannot_replay() -> None:
    with pytest.raises(ConfigError, match="replay"):
        OpenCVSource(camera("rtsp://user:pw@cam.local/stream"), realtime=False)
    with pytest.raises(ConfigError, match="url"):
        OpenCVSource(camera(topic="frigate/door/snapshot"))
    assert redact("rtsp://user:secret@cam.local:554/s") == "rtsp://user:***@cam.local:554/s"


def jpeg_of(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image)[1].tobytes()


def test_corrupt_snapshots_are_counted_and_never_delivered(photos: list[np.ndarray]) -> None:
    good = jpeg_of(photos[3])
    corrupt = [
        b"",
        b"not a jpeg at all",
        good[: len(good) // 2],  # truncated: libjpeg would return it grey-filled
        good[:2] + bytes(200) + good[-2:],  # markers only, no image inside
        np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    ]
    with MqttSnapshotSource(camera(topic="frigate/front_door/snapshot", fps=60.0)) as source:
        for count, payload in enumerate(corrupt, 1):
            source.push(payload)
            wait_until(lambda count=count: source.stats.undecodable == count)
        source.push("a text payload")  # type: ignore[arg-type]
        assert source.latest(0.2) is None
        source.push(good)
        frame = source.latest(10)
    assert frame is not None and frame.seq == 1 and which_photo(frame.image, photos) == 3
    stats = source.stats
    assert (stats.frames_read, stats.frames_decoded, stats.undecodable) == (7, 1, 6)


def test_snapshots_arrive_through_a_real_broker(mosquitto, photos: list[np.ndarray]) -> None:
    topic = "frigate/front_door/snapshot"
    source = open_source(camera(topic=topic, fps=60.0))
    assert isinstance(source, MqttSnapshotSource)
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda c, userdata, msg: source.push(msg.payload)
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        with source:
            assert subscribed.wait(10)
            publish = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            publish.connect(mosquitto.host, mosquitto.port)
            publish.loop_start()
            publish.publish(topic, jpeg_of(photos[5]), qos=1).wait_for_publish(10)
            frame = source.latest(10)
            publish.loop_stop()
            publish.disconnect()
    finally:
        client.loop_stop()
        client.disconnect()
    assert frame is not None and which_photo(frame.image, photos) == 5


def test_newest_snapshot_wins_when_they_arrive_faster_than_fps(photos: list[np.ndarray]) -> None:
    source = MqttSnapshotSource(camera(topic="frigate/front_door/snapshot", fps=1.0))
    jpegs = [jpeg_of(image) for image in photos[:6]]
    with source:
        source.push(jpegs[0])
        assert which_photo(source.latest(10).image, photos) == 0
        for jpeg in jpegs[1:]:  # within the same second: only the newest is decoded
            source.push(jpeg)
        frame = source.latest(10)
    assert which_photo(frame.image, photos) == 5
    assert source.stats.frames_decoded == 2 and source.stats.dropped == 4


def test_a_camera_a_little_faster_than_its_fps_is_never_held_back(photos: list[np.ndarray]) -> None:
    """Snapshots 7 % faster than the declared fps: each is taken as it comes (spaced from the last
    one taken). A fixed grid held each one back a little more than the one before, up to a
    whole period: by the 12th, 0.77 of a period of latency added to every unlock."""
    fps = 5.0
    source = MqttSnapshotSource(camera(topic="frigate/front_door/snapshot", fps=fps))
    jpeg, lags = jpeg_of(photos[0]), []
    with source:
        due = time.monotonic()
        for _ in range(12):
            time.sleep(max(0.0, due - time.monotonic()))
            source.push(jpeg)
            frame = source.latest(10)
            assert frame is not None
            lags.append(time.monotonic() - frame.ts)
            due += 0.93 / fps
    assert max(lags) < 0.5 / fps, [round(lag, 3) for lag in lags]
    assert source.stats.dropped == 0 and source.stats.frames_decoded == 12


def test_a_snapshot_flood_is_rate_limited_per_topic(photos: list[np.ndarray]) -> None:
    """Twice the fps is taken (a burst of one second's worth, at least 10); the rest is counted, not kept."""
    source = MqttSnapshotSource(camera(topic="frigate/front_door/snapshot", fps=10.0))
    other = MqttSnapshotSource(CameraSettings(name="back_door", mqtt_topic="frigate/back_door/snapshot", fps=10.0))
    flood = jpeg_of(photos[0])
    for _ in range(1000):  # well within a second
        source.push(flood)
    other.push(jpeg_of(photos[7]))  # another topic keeps its own budget
    stats = source.stats
    assert stats.frames_read == 1000 and 975 <= stats.rate_limited <= 981, stats
    assert other.stats.rate_limited == 0
    with other:
        frame = other.latest(10)
    assert frame is not None and which_photo(frame.image, photos) == 7


def test_a_snapshot_declaring_too_many_pixels_is_refused_before_decoding(photos: list[np.ndarray]) -> None:
    data = jpeg_of(photos[2])
    at = data.find(b"\xff\xc0")
    bomb = data[: at + 5] + (20_000).to_bytes(2, "big") * 2 + data[at + 9 :]  # declares 20000 x 20000
    with MqttSnapshotSource(camera(topic="frigate/front_door/snapshot", fps=60.0, max_snapshot_pixels=1_000_000)) as source:
        source.push(bomb)
        wait_until(lambda: source.stats.undecodable == 1)
        source.push(data)  # 640 x 480 = 0.3 MP: within the camera's bound
        frame = source.latest(10)
    assert "400.0 MP, over the 1 MP limit" in source.last_error
    assert frame is not None and which_photo(frame.image, photos) == 2
