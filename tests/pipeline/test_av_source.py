"""PyAV source: keyframes only while the door is idle, every frame again (unsmeared) on waking,
full decoding for long GOPs; real H.264 clips written with PyAV's own libx264."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from facelock_mqtt.pipeline.av_source import GopDecoder
from facelock_mqtt.pipeline.source import OpenCVSource, open_source
from facelock_mqtt.settings import CameraSettings

FPS = 5


def frame(index: int) -> np.ndarray:
    """A textured scene with a bright square that moves a little each frame (every frame differs)."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 200, (120, 160, 3), dtype=np.uint8)
    x = 10 + 5 * index % 120
    image[40:80, x : x + 30] = 255
    return image


def write_h264(path: Path, frames: int, gop: int) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "bf": "0", "crf": "12", "sc_threshold": "0"}
        for index in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame(index), format="bgr24")))
        container.mux(stream.encode())
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def feed(path: Path, idle_for) -> tuple[GopDecoder, list[tuple[int, int, np.ndarray]]]:
    """Run a GopDecoder over the clip, `idle_for(packet number)`: (decoder, [(packet number,
    frame index from its timestamp, image)])."""
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = GopDecoder(stream)
        for number, packet in enumerate(p for p in container.demux(stream) if p.size):
            for f in decoder.feed(packet, idle_for(number)):
                out.append((number, round(f.time * FPS), f.to_ndarray(format="bgr24")))
    return decoder, out


def test_idle_decodes_only_keyframes_of_a_short_gop(tmp_path: Path) -> None:
    clip = write_h264(tmp_path / "short.mp4", frames=30, gop=FPS)  # a keyframe every second
    decoder, out = feed(clip, lambda n: True)
    assert decoder.key_gap_s == pytest.approx(1.0)
    # the first GOP is decoded in full (the interval is not known yet), then only keyframes
    assert [i for _, i, _ in out] == [*range(FPS + 1), *range(2 * FPS, 30, FPS)]
    assert decoder.skipped == 30 - len(out)


def test_waking_mid_gop_decodes_the_kept_packets_and_the_frames_are_not_smeared(tmp_path: Path) -> None:
    clip = write_h264(tmp_path / "wake.mp4", frames=30, gop=FPS)
    reference = decode_all(clip)
    wake = 2 * FPS + 3  # three packets into the third GOP
    _, out = feed(clip, lambda n: n < wake)
    burst = [i for n, i, _ in out if n == wake]
    assert burst == [wake - 2, wake - 1, wake]  # the two kept packets, then this one, in order
    after = [(i, image) for n, i, image in out if n >= wake]
    assert [i for i, _ in after] == list(range(wake - 2, 30))  # and every frame from then on
    for index, image in after:  # each as a full decode gives it: the references stayed intact
        assert np.abs(image.astype(int) - reference[index].astype(int)).max() <= 2


def test_a_long_gop_is_decoded_in_full_even_when_idle(tmp_path: Path) -> None:
    clip = write_h264(tmp_path / "long.mp4", frames=30, gop=10 * FPS)  # one keyframe in 10 s
    decoder, out = feed(clip, lambda n: True)
    assert len(out) == 30 and decoder.skipped == 0 and not decoder.can_idle


def test_live_file_cameras_use_pyav_and_an_idle_door_gets_keyframes(tmp_path: Path) -> None:
    clip = write_h264(tmp_path / "live.mp4", frames=40, gop=FPS)  # 8 s at 5 fps
    camera = CameraSettings(name="door", url=str(clip), fps=FPS, idle_keyframes=True)
    assert isinstance(open_source(camera, realtime=False), OpenCVSource)  # replay: every frame, as before
    source = open_source(camera)
    assert type(source).__name__ == "AVSource"
    seen = []
    with source:
        source.set_idle(True)
        deadline = time.monotonic() + 20
        while not source.finished and time.monotonic() < deadline:
            got = source.latest(timeout=0.5)
            if got is not None:
                seen.append(got)
    stats = source.stats
    assert source.keyframe_gap_s == pytest.approx(1.0)
    assert FPS + 1 + 5 <= len(seen) <= FPS + 1 + 8  # the first GOP whole, then about one frame a second
    assert stats.frames_decoded == len(seen) and stats.skipped >= 40 - len(seen) - 1


def test_without_idle_keyframes_cameras_keep_the_opencv_reader(tmp_path: Path) -> None:
    clip = write_h264(tmp_path / "all.mp4", frames=15, gop=FPS)
    source = open_source(CameraSettings(name="door", url=str(clip), fps=FPS))  # the default: off
    assert isinstance(source, OpenCVSource) and not hasattr(source, "set_idle")
