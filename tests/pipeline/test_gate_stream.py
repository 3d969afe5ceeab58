"""gate_url: the camera's low-resolution sub-stream feeds the motion gate while the door is idle,
the main stream is only demuxed and caught up on waking. Real H.264 clip pairs (PyAV's libx264)
of the bench's entrance with a real NUAA visitor, a real MotionGate deciding when to wake."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from facelock_mqtt.pipeline.gate import MotionGate
from facelock_mqtt.pipeline.gate_stream import DualStream, GateStreamSource, gate_image
from facelock_mqtt.pipeline.source import OpenCVSource, open_source
from facelock_mqtt.settings import CameraSettings, GateSettings
from facelock_mqtt.tools.bench_clips import Scene, background, person_patches, session_frames, visit_frames, write_clip_pair

FPS = 10
EMPTY_BEFORE, EMPTY_AFTER = 15, 35  # frames of empty entrance around the visit
BOX = np.array([270, 130, 145, 200], np.float32)  # the face in s0001's session-02 frames


@pytest.fixture(scope="module")
def clips(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """main.mp4 (640x480) and sub.mp4 (320x240, same frames, same GOP), the visit's frame range
    and the main stream decoded in full (the reference)."""
    folder = tmp_path_factory.mktemp("gate_stream")
    visit = visit_frames(person_patches(session_frames(shared_data, "s0001", "02"), BOX), FPS)
    shown = [None] * EMPTY_BEFORE + visit + [None] * EMPTY_AFTER
    scene = Scene(background())
    frames = [scene.render(1.0, placement) for placement in shown]
    write_clip_pair(frames, folder / "main.mp4", folder / "sub.mp4", FPS, (640, 480), (320, 240))
    write_clip_pair(frames[:40], folder / "short_sub.mp4", None, FPS, (320, 240))  # ends before main does
    write_clip_pair(frames[:20], folder / "wide_sub.mp4", None, FPS, (320, 180))  # another aspect ratio
    whole = [i for i, p in enumerate(shown) if p is not None and p.whole]
    return {"folder": folder, "main": folder / "main.mp4", "sub": folder / "sub.mp4", "reference": decode_all(folder / "main.mp4"),
            "visit": (EMPTY_BEFORE, EMPTY_BEFORE + len(visit)), "whole": whole}  # fmt: skip


def decode_all(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def replay(main: Path, sub: Path) -> tuple[DualStream, list[tuple[int, bool, np.ndarray, bool]]]:
    """Drive DualStream as a door would, synchronously: a real gate on every delivered frame,
    idle = the gate held the frame back (and a main frame was seen). [(frame index, gate_only,
    image, gate passed)]."""
    gate, state, out = MotionGate(GateSettings()), {"idle": False, "main_seen": False}, []
    with av.open(str(main)) as m, av.open(str(sub)) as s:
        dual = DualStream(m.demux(m.streams.video[0]), s.demux(s.streams.video[0]))
        for frames, gate_only in dual.frames(lambda: state["idle"] and state["main_seen"], lambda packet: False):
            if not frames:
                continue
            image = gate_image(frames[-1]) if gate_only else frames[-1].to_ndarray(format="bgr24")
            passed = gate.update(image, frames[-1].time).passed
            state["idle"], state["main_seen"] = not passed, state["main_seen"] or not gate_only
            out.append((round(frames[-1].time * FPS), gate_only, image, passed))
    return dual, out


def test_idle_decodes_the_sub_stream_and_wakes_to_exact_main_frames_within_one_interval(clips: dict) -> None:
    dual, out = replay(clips["main"], clips["sub"])
    reference, (start, end) = clips["reference"], clips["visit"]
    main = [(i, image) for i, gate_only, image, _ in out if not gate_only]
    for index, image in main:  # the catch-up kept the decoder's references: a full decode's pixels
        assert np.array_equal(image, reference[index]), index
    woke = next(i for i, gate_only, _, passed in out if gate_only and passed)
    first_main = next(i for i, _ in main if i > woke)
    assert start <= woke <= start + 2  # the sub-stream saw the visitor come in
    assert first_main - woke <= 1  # at most one frame interval to the first main frame
    assert set(clips["whole"]) <= {i for i, _ in main}  # every frame showing the whole face went on: no visit missed
    assert dual.gate_problem is None and dual.gate_decoded == len(reference)  # the gate saw every frame
    # idle main packets are never decoded: only the delivered ones and one wake-up's catch-up (< a GOP)
    assert len(main) <= len(reference) - EMPTY_BEFORE - 5 and dual.main.decoded < len(main) + FPS
    passed_after = [i for i, _, _, passed in out if passed and i >= end]
    print(f"frames passed after the visit: {len(passed_after)}/{len(reference) - end}; main decoded {dual.main.decoded}")
    assert len(passed_after) <= 35 and not any(passed for i, _, _, passed in out if i >= len(reference) - 5)


def test_a_gate_stream_that_ends_early_hands_over_to_full_decoding_without_a_lost_packet(clips: dict) -> None:
    dual, out = replay(clips["main"], clips["folder"] / "short_sub.mp4")
    assert dual.gate_problem == "gate stream ended"
    main = [(i, image) for i, gate_only, image, _ in out if not gate_only]
    tail = [i for i, _ in main if i >= 40]
    assert tail == list(range(40, len(clips["reference"])))  # from the gate's end on, every frame
    for index, image in main:
        assert np.array_equal(image, clips["reference"][index]), index


def watch(source, seconds: float) -> list:
    """Consume a live source as the service does, the gate's verdict going back by set_idle."""
    gate, seen, deadline = MotionGate(GateSettings()), [], time.monotonic() + seconds
    with source:
        while not source.finished and time.monotonic() < deadline:
            frame = source.latest(timeout=0.5)
            if frame is None:
                continue
            passed = gate.update(frame.image, frame.pts).passed
            source.set_idle(not passed)
            seen.append((frame, passed))
    return seen


def test_live_source_gives_gate_frames_while_idle_and_exact_main_frames_for_the_visit(clips: dict) -> None:
    camera = CameraSettings(name="door", url=str(clips["main"]), gate_url=str(clips["sub"]), fps=FPS)
    assert isinstance(open_source(camera, realtime=False), OpenCVSource)  # replay: every frame, as before
    source = open_source(camera)
    assert isinstance(source, GateStreamSource)
    seen = watch(source, 30)
    reference = clips["reference"]
    gate_only = [f for f, _ in seen if f.gate_only]
    main = [f for f, _ in seen if not f.gate_only]
    assert source.gate_problem is None and source.finished
    assert len(gate_only) >= EMPTY_BEFORE // 2 and all(f.image.shape == (240, 320) for f in gate_only)
    for frame in main:
        assert np.array_equal(frame.image, reference[round(frame.pts * FPS)])
    delivered = {round(f.pts * FPS) for f in main}
    assert len(delivered & set(clips["whole"])) >= len(clips["whole"]) - 3  # the visit, as good as whole
    assert source.dual.main.decoded < len(reference)  # some main packets were only demuxed


def test_a_dead_or_foreign_gate_url_falls_back_to_full_decoding(clips: dict) -> None:
    for gate_url, problem in ((clips["folder"] / "missing.mp4", "cannot open gate_url"),
                              (clips["folder"] / "wide_sub.mp4", "not the same view")):  # fmt: skip
        camera = CameraSettings(name="door", url=str(clips["folder"] / "short_sub.mp4"), gate_url=str(gate_url), fps=FPS)
        source = GateStreamSource(camera)
        seen = watch(source, 15)
        assert problem in source.gate_problem and source.dual is None
        assert not any(f.gate_only for f, _ in seen)
        assert len(seen) >= 36  # url decoded in full (a frame may miss the rate limit's slot on a loaded machine)


def test_gate_url_needs_a_stream_or_file_url() -> None:
    assert CameraSettings(name="door", url="rtsp://cam/main", gate_url="rtsp://cam/sub").gate_url == "rtsp://cam/sub"
    for bad in ({"mqtt_topic": "cam/snapshot"}, {"url": "/dev/video0"}, {"url": "rtsp://cam/main", "idle_keyframes": True}):
        with pytest.raises(ValueError, match="gate_url"):
            CameraSettings(name="door", gate_url="rtsp://cam/sub", **bad)
