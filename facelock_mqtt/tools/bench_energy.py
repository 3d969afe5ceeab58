"""Benchmarks 1 and 2: what the motion gate costs, and what it saves.

1. Gate cost per frame against decoding the same frames from a compressed clip (the floor:
   every camera frame has to be decoded anyway), at 640x360 and 1920x1080.
2. The energy argument on a synthetic "door day": CPU seconds of the whole door pipeline
   (gate, sanity, lockout, detection, embedding, matching, decision, MQTT) with the gate, and
   with recognition on every frame, on the same clip; visits the gate made the door miss and
   gate openings with nobody there.
CPU is `time.process_time()` (all threads of this process); decoding is timed apart so the
pipeline's own share and the total can both be shown.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from ..guards.audit import AUDIT_FILE, AuditLog
from ..pipeline.av_source import GopDecoder
from ..pipeline.av_source import available as av_available
from ..pipeline.gate import MotionGate
from ..pipeline.gate_stream import DualStream, gate_image, single_threaded
from ..pipeline.imageio import read_image
from ..pipeline.source import Frame
from ..recognizer import Recognizer
from ..service import Service
from ..settings import CameraSettings, GateSettings, Settings
from ..storage.files import secure_dir
from .bench_clips import (
    HEIGHT,
    SUB_SIZE,
    WIDTH,
    BenchError,
    DoorDay,
    Scene,
    background,
    decode_cpu_s,
    person_patches,
    plan_door_day,
    read_clip,
    session_frames,
    write_clip,
    write_clip_pair,
)

DOOR = "front"
CHUNK = 250  # frames decoded ahead (about 230 MB at 640x480)
# (identity, enrolled); enrolled people are enrolled from session 01 and visit with session 02.
VISITORS = [("s0001", True), ("s0004", True), ("s0005", False), ("s0006", True), ("s0007", True), ("s0008", False)]
ENROLL_SESSION, VISIT_SESSION = "01", "02"


def _moving_block(index: int, count: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A dark box crossing the middle third of the clip, so the gate's motion path is timed too."""
    third = max(1, count // 3)
    if not third <= index < 2 * third:
        return None
    size = height // 3
    x = int((index - third) / third * (width - size))
    return x, height // 3, size, size


def gate_vs_decode(width: int, height: int, frames: int, repeats: int, workdir: Path) -> dict:
    """ms/frame (CPU) of decoding the clip and of the gate on the decoded frames; ratio per repeat."""
    scene = Scene(background(width, height))
    rendered = []
    for index in range(frames):
        frame = scene.render(1.0)
        block = _moving_block(index, frames, width, height)
        if block is not None:
            x, y, w, h = block
            frame[y : y + h, x : x + w] //= 3
        rendered.append(frame)
    clip = workdir / f"gate_{width}x{height}.mp4"
    codec = write_clip(rendered, clip, 5.0, (width, height))
    del rendered
    decode_ms, gate_ms, ratios = [], [], []
    for _ in range(repeats):
        decode_s, count = decode_cpu_s(clip)
        decoded = list(read_clip(clip))
        gate = MotionGate(GateSettings())
        start = time.process_time()
        for index, frame in enumerate(decoded):
            gate.update(frame, now=index / 5.0)
        gate_cpu = time.process_time() - start
        decode_ms.append(1000 * decode_s / count)
        gate_ms.append(1000 * gate_cpu / len(decoded))
        ratios.append(gate_ms[-1] / decode_ms[-1])
    return {
        "size": f"{width}x{height}",
        "codec": codec,
        "frames": frames,
        "repeats": repeats,
        "decode_cpu_ms_per_frame": statistics.median(decode_ms),
        "gate_cpu_ms_per_frame": statistics.median(gate_ms),
        "gate_over_decode": statistics.median(ratios),
    }


def enroll_people(settings: Settings, data: Path) -> tuple[Recognizer, dict[str, list[Path]]]:
    """Enroll the enrolled visitors; return the recognizer (for face boxes) and visit frames."""
    data_dir = secure_dir(settings.data_dir)
    audit = AuditLog(data_dir / AUDIT_FILE, settings.audit)  # as `facelock enroll`: the service checks it
    recognizer = Recognizer(data_dir, settings.model, settings.quality, settings.match, audit=audit)
    enrolled = {p.name for p in recognizer.gallery.people()}
    for person, is_enrolled in VISITORS:
        if is_enrolled and person not in enrolled:
            paths = session_frames(data, person, ENROLL_SESSION)[:3]
            recognizer.enroll(person, [(str(p), read_image(p)) for p in paths])
    return recognizer, {p: session_frames(data, p, VISIT_SESSION) for p, _ in VISITORS}


def visitor_patches(recognizer: Recognizer, frames: dict[str, list[Path]], count: int) -> list:
    """(identity, enrolled, placements) for `count` visits, cycling through VISITORS."""
    out = []
    for number in range(count):
        person, enrolled = VISITORS[number % len(VISITORS)]
        paths = frames[person]
        faces = recognizer.engine.faces(read_image(paths[0]))
        if not faces:
            raise RuntimeError(f"no face found in {paths[0]}")
        out.append((person, enrolled, person_patches(paths, max(faces, key=lambda f: f.area).box)))
    return out


@dataclass
class ClipRun:
    mode: str
    pipeline_cpu_s: float = 0.0
    decode_cpu_s: float = 0.0
    frames: int = 0
    analysed: int = 0
    passed_at: list[int] = field(default_factory=list)
    motion_starts: list[int] = field(default_factory=list)
    events: list[tuple[int, dict]] = field(default_factory=list)
    refused_sanity: int = 0
    index: int = 0  # the frame being processed (events are noted with it)
    decoded: int = 0  # main-stream packets decoded (keyframe and sub-stream modes skip some while idle)
    idle_cpu_s: float = 0.0  # decode + pipeline CPU of the steps with the door idle before and after
    idle_frames: int = 0  # main-stream packets (camera frame intervals) read with the door idle
    wake_lateness: list[int] = field(default_factory=list)  # sub-stream: motion frame -> first main frame
    catchups_ms: list[float] = field(default_factory=list)  # sub-stream: CPU ms of each wake-up's catch-up
    gate_decoded: int = 0  # sub-stream packets decoded


def _account(run: ClipRun, cpu_s: float, was_idle: bool, door, main_packet: bool) -> None:
    """Count a step's CPU as idle when the door was idle before and after it (nobody there)."""
    if was_idle and door.idle:
        run.idle_cpu_s += cpu_s
        run.idle_frames += main_packet


def _process(run: ClipRun, door, image, index: int, fps: float, gate_only: bool = False) -> None:
    passed, motions = door.gate.stats.frames_passed, door.gate.stats.motion_events
    door.process(Frame(image, time.monotonic(), index + 1, index / fps, gate_only))
    if door.gate.stats.frames_passed > passed:
        run.passed_at.append(index)
    if door.gate.stats.motion_events > motions:
        run.motion_starts.append(index)


def _pyav_pass(run: ClipRun, door, clip: Path, fps: float, keyframes_when_idle: bool) -> int:
    """Decode packet by packet as AVSource does (keyframes only while the door is idle, a
    wake-up burst delivers its newest frame) and process each delivered frame; decode and
    pipeline CPU timed apart. Returns the clip's frame count."""
    import av

    count = 0
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        decoder = GopDecoder(stream)
        for packet in container.demux(stream):
            start, was_idle = time.process_time(), door.idle
            idle = keyframes_when_idle and door.idle
            frames = packet.decode() if packet.size == 0 else decoder.feed(packet, idle)
            image = frames[-1].to_ndarray(format="bgr24") if frames else None
            decoding = time.process_time() - start
            run.decode_cpu_s += decoding
            count += packet.size > 0
            pipeline = 0.0
            if image is not None:
                run.index = round(frames[-1].time * fps)
                start = time.process_time()
                _process(run, door, image, run.index, fps)
                pipeline = time.process_time() - start
                run.pipeline_cpu_s += pipeline
            _account(run, decoding + pipeline, was_idle, door, packet.size > 0)
    run.decoded = decoder.decoded
    return count


def _substream_pass(run: ClipRun, door, clip: Path, sub_clip: Path, fps: float) -> int:
    """The two streams through DualStream as GateStreamSource reads them: the sub-stream's
    frames go to the door (gate only) while it is idle, the main stream is kept undecoded and
    caught up on waking. Returns the main clip's frame count."""
    import av

    main_seen, motion_at = False, None
    with av.open(str(clip)) as main, av.open(str(sub_clip)) as sub:
        single_threaded(sub.streams.video[0])
        dual = DualStream(main.demux(main.streams.video[0]), sub.demux(sub.streams.video[0]))
        steps = dual.frames(lambda: door.idle and main_seen, lambda packet: False)
        while True:
            start, was_idle, catchup = time.process_time(), door.idle, dual.main.last_catchup
            step = next(steps, None)
            if step is None:
                break
            frames, gate_only = step
            convert = gate_image if gate_only else (lambda frame: frame.to_ndarray(format="bgr24"))
            image = convert(frames[-1]) if frames else None
            decoding = time.process_time() - start
            run.decode_cpu_s += decoding
            if dual.main.last_catchup is not catchup:
                run.catchups_ms.append(dual.main.last_catchup[1])
            pipeline = 0.0
            if image is not None:
                run.index = round(frames[-1].time * fps)
                if not gate_only and motion_at is not None:
                    run.wake_lateness.append(run.index - motion_at)
                    motion_at = None
                main_seen = main_seen or not gate_only
                motions = door.gate.stats.motion_events
                start = time.process_time()
                _process(run, door, image, run.index, fps, gate_only)
                pipeline = time.process_time() - start
                run.pipeline_cpu_s += pipeline
                if gate_only and door.gate.stats.motion_events > motions:
                    motion_at = run.index
            _account(run, decoding + pipeline, was_idle, door, not gate_only)
        if dual.gate_problem is not None:
            raise BenchError(f"the gate sub-stream was given up: {dual.gate_problem}")
    run.decoded, run.gate_decoded = dual.main.decoded, dual.gate_decoded
    return dual.main.decoded + dual.main.demuxed_only + len(dual.main.kept)  # every main packet, once


def _opencv_pass(run: ClipRun, door, clip: Path, fps: float) -> int:
    """Without PyAV: decode every frame with OpenCV, a chunk at a time, then process the chunk
    (decoder threads never run during the timed pipeline). Returns the clip's frame count."""
    frames, count = read_clip(clip), 0
    while True:
        start = time.process_time()
        chunk = list(islice(frames, CHUNK))
        run.decode_cpu_s += time.process_time() - start
        if not chunk:
            return count
        start = time.process_time()
        for run.index, image in enumerate(chunk, start=count):
            _process(run, door, image, run.index, fps)
        count += len(chunk)
        run.decoded = count
        run.pipeline_cpu_s += time.process_time() - start


def run_clip(
    settings: Settings, clip: Path, fps: float, mode: str, keyframes_when_idle: bool = False, sub_clip: Path | None = None
) -> ClipRun:
    """Replay `clip` (with `sub_clip` as its gate sub-stream) frame by frame through a real door
    of a real service; time it all."""
    run = ClipRun(mode)
    camera = CameraSettings(name=DOOR, url=str(clip), fps=fps)
    service = Service(settings, cameras=[camera], realtime=False, on_event=lambda e: run.events.append((run.index, e)))
    try:
        service.bridge.start()
        service.bridge.mqtt.connected.wait(10)
        door = service.doors[DOOR]
        if sub_clip is not None:
            count = _substream_pass(run, door, clip, sub_clip, fps)
        elif av_available():
            count = _pyav_pass(run, door, clip, fps, keyframes_when_idle)
        else:
            count = _opencv_pass(run, door, clip, fps)
        door.finish(count / fps)
    finally:
        service.stop()
    run.frames, run.analysed, run.refused_sanity = count, door.stats.analysed, door.stats.refused_sanity
    return run


def visit_outcomes(day: DoorDay, run: ClipRun, settings: Settings) -> list[dict]:
    """Per visit: frames the gate passed while the face was whole in view, and the decisions."""
    tail = round((settings.decision.window_s + settings.gate.hold_s) * day.fps)
    passed = set(run.passed_at)
    outcomes = []
    for visit in day.visits:
        end = visit.start + visit.frames
        decisions = [e for i, e in run.events if visit.start <= i < end + tail]
        expected = "recognized" if visit.enrolled else "denied"
        outcomes.append({
            "person": visit.person,
            "enrolled": visit.enrolled,
            "whole_face_frames_passed": sum(visit.first_whole <= i < end for i in passed),
            "decisions": [e["event_type"] for e in decisions],
            "as_expected": bool(decisions) and decisions[0]["event_type"] == expected
            and (not visit.enrolled or decisions[0]["person"] == visit.person),
        })  # fmt: skip
    return outcomes


def false_triggers(day: DoorDay, run: ClipRun, settings: Settings) -> dict:
    """Gate openings (and frames passed) while nobody was in the scene."""
    margin = round(settings.gate.hold_s * day.fps) + 1
    busy = {i for v in day.visits for i in range(v.start, v.start + v.frames + margin)}
    return {
        "motion_events_without_visit": sum(i not in busy for i in run.motion_starts),
        "frames_passed_without_visit": sum(i not in busy for i in run.passed_at),
    }


def decision_delays(served: ClipRun, full: ClipRun) -> list[int | None]:
    """Per decision: frames by which keyframe-only idle decoding delayed it (None: unmatched)."""
    full_at = [i for i, _ in full.events]
    served_at = [i for i, _ in served.events]
    if len(full_at) != len(served_at):
        return [None] * max(len(full_at), len(served_at))
    return [s - f for s, f in zip(served_at, full_at, strict=True)]


def door_day_energy(
    settings_for: Callable[[bool], Settings], data: Path, seconds: float, visits: int, repeats: int, workdir: Path
) -> dict:
    """The door-day comparison; `settings_for(gate_enabled)` gives the service settings."""
    recognizer, frames = enroll_people(settings_for(True), data)
    try:
        day = plan_door_day(seconds, 5.0, visitor_patches(recognizer, frames, visits))
    finally:
        recognizer.close()
    clip, sub_clip = workdir / "door_day.mp4", workdir / "door_day_sub.mp4"
    scene = Scene(background())
    if av_available():  # the same frames also as the camera's 320x240 second stream (gate_url)
        codec = write_clip_pair(day.frames(scene), clip, sub_clip, day.fps, (WIDTH, HEIGHT), SUB_SIZE)
    else:
        codec, sub_clip = write_clip(day.frames(scene), clip, day.fps, (WIDTH, HEIGHT)), None
    # gate: keyframes only while idle (idle_keyframes, PyAV); gate_substream: the sub-stream for
    # the gate while idle, the main stream only demuxed (gate_url); gate_full_decode: every frame
    # decoded, the gate on each (the default without gate_url); every_frame: no gate at all.
    modes = ["gate", *(["gate_substream"] if sub_clip else []), "gate_full_decode", "every_frame"]
    runs: dict[str, list[ClipRun]] = {mode: [] for mode in modes}
    for _ in range(repeats):  # interleaved, so background load hits them alike
        for mode, mode_runs in runs.items():
            mode_runs.append(run_clip(settings_for(mode != "every_frame"), clip, day.fps, mode, mode == "gate",
                                      sub_clip if mode == "gate_substream" else None))  # fmt: skip
    report: dict = {"codec": codec, "seconds": seconds, "fps": day.fps, "frames": day.n_frames, "repeats": repeats,
                    "decoder": "pyav" if av_available() else "opencv", "sub_stream": "x".join(map(str, SUB_SIZE))}  # fmt: skip
    report["visits"] = [{"person": v.person, "enrolled": v.enrolled, "start_s": v.start / day.fps} for v in day.visits]
    every = runs["every_frame"]
    for mode, mode_runs in runs.items():
        last = mode_runs[-1]  # outcomes are the same in every repeat: the clip and the models are
        report[mode] = {
            "pipeline_cpu_s": statistics.median(r.pipeline_cpu_s for r in mode_runs),
            "decode_cpu_s": statistics.median(r.decode_cpu_s for r in mode_runs),
            "frames_decoded": last.decoded,
            "frames_analysed": last.analysed,
            "refused_sanity": last.refused_sanity,
            "outcomes": visit_outcomes(day, last, settings_for(mode != "every_frame")),
        }
        if mode != "every_frame":
            report[mode].update(false_triggers(day, last, settings_for(True)))
            report[mode]["idle_cpu_percent"] = statistics.median(_idle_percent(r, day.fps) for r in mode_runs)
            report[mode]["cpu_saving_with_decode"] = statistics.median(_savings(mode_runs, every, decoding=True))
    if sub_clip:
        last = runs["gate_substream"][-1]
        report["gate_substream"].update({"sub_frames_decoded": last.gate_decoded, "wake_lateness_frames": last.wake_lateness,
                                         "catchup_cpu_ms": last.catchups_ms})  # fmt: skip
        report["decision_delay_frames_substream"] = decision_delays(last, runs["gate_full_decode"][-1])
    report["decision_delay_frames"] = decision_delays(runs["gate"][-1], runs["gate_full_decode"][-1])
    # The headline is the best mode a user can have by default: gate_substream where the camera
    # gives a gate_url (always on then), else full decoding; keyframe mode is opt-in (it is late).
    headline = "gate_substream" if sub_clip else "gate_full_decode"
    report["headline_mode"] = headline
    report["cpu_saving_pipeline"] = statistics.median(_savings(runs[headline], every, decoding=False))
    report["cpu_saving_with_decode"] = report[headline]["cpu_saving_with_decode"]
    report["cpu_saving_with_decode_full_decoding"] = report["gate_full_decode"]["cpu_saving_with_decode"]
    report["cpu_saving_with_decode_by_mode"] = {m: report[m]["cpu_saving_with_decode"] for m in modes if m != "every_frame"}
    report["idle_cpu_percent"] = report[headline]["idle_cpu_percent"]
    every_ok = [o["as_expected"] for o in report["every_frame"]["outcomes"]]
    missed = {m: sum(e and not o["as_expected"] for o, e in zip(report[m]["outcomes"], every_ok, strict=True))
              for m in modes if m != "every_frame"}  # fmt: skip
    report["visits_missed"] = missed
    report["visits_missed_by_gate"] = max(missed.values())
    report["visits_without_expected_decision"] = {m: [o["as_expected"] for o in report[m]["outcomes"]].count(False)
                                                  for m in modes}  # fmt: skip
    return report


def _savings(gated: list[ClipRun], every: list[ClipRun], decoding: bool) -> list[float]:
    """Per repeat: CPU with recognition on every frame over CPU with this mode's gate."""
    return [(e.pipeline_cpu_s + decoding * e.decode_cpu_s) / (g.pipeline_cpu_s + decoding * g.decode_cpu_s)
            for g, e in zip(gated, every, strict=True)]  # fmt: skip


def _idle_percent(run: ClipRun, fps: float) -> float:
    """Decode + pipeline CPU while nobody was there, in % of a core at the camera's frame rate
    (what an idle camera costs live, less the service's thread wake-ups). A gated door is idle
    for most of the day (an error here if it never was)."""
    return 100 * run.idle_cpu_s / (run.idle_frames / fps)
