"""Benchmark item 4 (issue 12): many doors on one service, 1, 4 and 8 cameras at 10 fps.

A child process runs the real service with N url cameras, each an H.264 clip played in real time
(bench_clips: the synthetic entrance, NUAA people pasted in). Doors 0 and 1 are visited at the
same moments, each by its own enrolled person; the other doors stay empty. Every clip follows
one timeline (seconds of clip time):

    warm-up visit (untimed)  | gate settles | quiet window        | visits, `visits` times
    LEAD_S .. +stay_s        | SETTLE_S     | quiet_s: idle CPU   | face whole for stay_s, then gap_s

The child measures its own CPU time over the quiet window (idle CPU per camera) and over the
visits' stay_s (CPU during a visit), and notes when the first whole-face frame of each visit was
handed to each visited door (`Frame.ts`, the monotonic capture time: one clock for every process
of the machine). A separate MQTT subscriber in this process times `lock/state` UNLOCKED from
there. Each camera count runs with batching on (`model.max_batch` 8) and, from 2 cameras, off
(`max_batch` 1: every door runs its own face, as before); the ratios compare the two runs.

    python -m facelock_mqtt.tools.bench_doors --child ...   (used by `facelock bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..pipeline.engine import FaceEngine
from ..pipeline.source import Frame
from ..recognizer import resolve_bundle
from ..service import Service
from ..settings import Settings, load_settings
from .bench_clips import HEIGHT, WIDTH, BenchError, Placement, Scene, background, write_clip
from .bench_service import UNLOCKED, Subscriber, _percentiles, child_parser, thread_cpu_s

LEAD_S = 1.0  # empty scene before the warm-up visit: the gate learns the scene
SETTLE_S = 4.0  # after the warm-up visit: the gate forgets the visitor before the quiet window
TAIL_S = 1.5  # after the last visit, so its unlock arrives before the clip ends
VISITED = 2  # doors that see a face at the same moment (fewer when there are fewer cameras)
BATCH_ON = 8
IDLE_GOAL = 1.0  # % of a core per camera (issue 12 item 2)
LATENCY_GOAL_MS = 150.0  # p50 at 10 fps, one door (issue 12 item 3): context for the two-door p95


@dataclass(frozen=True)
class DoorsPlan:
    cameras: tuple[int, ...] = (1, 4, 8)
    fps: float = 10.0
    quiet_s: float = 6.0  # idle window
    visits: int = 4  # timed visits per run (each seen by VISITED doors at once)
    stay_s: float = 1.5  # the face in view; unlock comes within ~0.2 s of its first frame
    gap_s: float = 2.5  # empty scene between visits: longer than the 2 s cooldown used here
    at_once: tuple[int, ...] = (2, 4, 8)  # in-process: this many doors hand over a face at the same instant
    at_once_repeats: int = 20

    @property
    def quiet_start(self) -> float:
        return LEAD_S + self.stay_s + SETTLE_S

    def visit_starts(self) -> list[float]:
        """Clip seconds of each visit's first whole-face frame; the warm-up visit first."""
        first = self.quiet_start + self.quiet_s + self.gap_s
        return [LEAD_S] + [first + k * (self.stay_s + self.gap_s) for k in range(self.visits)]

    @property
    def seconds(self) -> float:
        return self.visit_starts()[-1] + self.stay_s + TAIL_S

    def frame(self, seconds: float) -> int:
        return round(seconds * self.fps)


def visit_clip(plan: DoorsPlan, person: list[Placement] | None, path: Path) -> str:
    """A clip of the plan's timeline: `person` whole in every visit (None: always empty); its codec."""
    shown: dict[int, Placement] = {}
    if person is not None:
        cycle = person + person[-2:0:-1]  # the consecutive captures back and forth: a live face moves
        stay = plan.frame(plan.stay_s)
        for start in plan.visit_starts():
            shown.update({plan.frame(start) + i: cycle[i % len(cycle)] for i in range(stay)})
    scene = Scene(background())
    # Steady light (gain 1): a clip of seconds must not carry a day's lighting drift, which would open the gate.
    frames = (scene.render(1.0, shown.get(index)) for index in range(plan.frame(plan.seconds)))
    return write_clip(frames, path, plan.fps, (WIDTH, HEIGHT))


def many_doors(
    settings: Settings, people: list[list[Placement]], images: list[np.ndarray], plan: DoorsPlan, workdir: Path
) -> dict:
    """The `doors` section: one child run per camera count and batching mode; `people` are the
    placements of two enrolled visitors (one per visited door), `images` camera frames of faces
    for the in-process measurement of faces handed over at the same instant."""
    clips = [workdir / f"doors_visit{i}.mp4" for i in range(VISITED)] + [workdir / "doors_idle.mp4"]
    codecs = {visit_clip(plan, person, clip) for person, clip in zip([*people[:VISITED], None], clips, strict=True)}
    runs = []
    for cameras in plan.cameras:
        for max_batch in (BATCH_ON, 1) if cameras > 1 else (BATCH_ON,):
            runs.append(door_run(settings, clips, cameras, max_batch, plan))
    at_once = [faces_at_once(settings, images, n, plan.at_once_repeats) for n in plan.at_once]
    return {"plan": asdict(plan), "codec": ", ".join(sorted(codecs)), "runs": runs, "comparisons": compare(runs),
            "at_once": at_once}  # fmt: skip


def faces_at_once(settings: Settings, images: list[np.ndarray], faces: int, repeats: int) -> dict:
    """`faces` threads, released together, each analysing one camera frame (detect, align,
    quality, embed) on one shared engine, batching on and off alternately: how long until each
    face, and the last face, has its vector (ms from the release), CPU ms per face."""
    bundle = resolve_bundle(settings.model, settings.data_dir)
    modes = {"on": BATCH_ON, "off": 1}
    engines = {
        mode: FaceEngine(bundle, settings.model.model_copy(update={"max_batch": m}), settings.quality)
        for mode, m in modes.items()
    }
    frames = [images[i % len(images)] for i in range(faces)]
    times: dict[str, dict[str, list[float]]] = {mode: {"face": [], "last": [], "cpu": []} for mode in modes}
    for trial in range(repeats + 2):  # two untimed trials per mode first (first runs of each batch size)
        order = list(modes) if trial % 2 == 0 else list(modes)[::-1]  # neither mode always goes first
        for mode in order:
            done, cpu = _release_together(engines[mode], frames)
            if trial >= 2:
                times[mode]["face"] += done
                times[mode]["last"].append(max(done))
                times[mode]["cpu"].append(cpu / faces)
    report: dict = {"faces": faces, "repeats": repeats}
    for mode, m in modes.items():
        batcher = engines[mode].batcher
        report[mode] = {
            "max_batch": m,
            "face_ms": _percentiles(times[mode]["face"]),
            "last_face_ms": _percentiles(times[mode]["last"]),
            "cpu_ms_per_face": float(np.median(times[mode]["cpu"])),
            "runs": None if batcher is None else batcher.stats.runs,
            "embedded": None if batcher is None else batcher.stats.faces,
        }
    on, off = report["on"], report["off"]
    report["last_face_p95_off_over_on"] = off["last_face_ms"]["p95"] / on["last_face_ms"]["p95"]
    report["cpu_off_over_on"] = off["cpu_ms_per_face"] / on["cpu_ms_per_face"]
    return report


def _release_together(engine: FaceEngine, frames: list[np.ndarray]) -> tuple[list[float], float]:
    """ms from the common release until each frame's face had its vector; process CPU ms."""
    barrier = threading.Barrier(len(frames) + 1)
    finished: list[float] = [0.0] * len(frames)
    failures: list[str] = []

    def door(index: int) -> None:
        barrier.wait()
        result = engine.analyze(frames[index])
        finished[index] = time.monotonic()
        if result is None or result.embedding is None:
            failures.append(f"frame {index}: no usable face")

    threads = [threading.Thread(target=door, args=(i,)) for i in range(len(frames))]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    barrier.wait()  # every door thread is waiting: all go now
    released = time.monotonic()
    for thread in threads:
        thread.join()
    cpu = time.process_time() - cpu
    if failures:
        raise BenchError("doors: " + "; ".join(failures))
    return [1000 * (t - released) for t in finished], 1000 * cpu


def door_run(settings: Settings, clips: list[Path], cameras: int, max_batch: int, plan: DoorsPlan) -> dict:
    """One child run; latency of every timed visit at every visited door, from the subscriber."""
    visited = min(VISITED, cameras)
    base = settings.mqtt.base_topic
    topics = [f"{base}/door{i}/lock/state" for i in range(visited)]
    watcher = Subscriber(settings.mqtt.host, settings.mqtt.port, topics)
    try:
        if not watcher.ready.wait(10):
            raise BenchError("doors: the subscriber could not subscribe")
        child = run_child(settings, clips, cameras, max_batch, plan)
        time.sleep(0.2)  # the last states in flight
        latencies, failed = [], 0
        for seen in child["face_ts"][1:]:  # the warm-up visit is not timed
            for topic, face_ts in zip(topics, seen, strict=True):
                unlocked = watcher.first(topic, UNLOCKED, face_ts) if face_ts is not None else None
                if unlocked is None or unlocked - face_ts > plan.stay_s + plan.gap_s:
                    failed += 1
                else:
                    latencies.append(1000 * (unlocked - face_ts))
    finally:
        watcher.close()
    child.pop("face_ts")
    return {
        **child,
        "batching": max_batch > 1,
        "visited_doors": visited,
        "unlocked": len(latencies),
        "expected": plan.visits * visited,
        "failed": failed,
        "unlock_ms": _percentiles(latencies),
        "unlock_ms_each": [round(v, 1) for v in latencies],
    }


def compare(runs: list[dict]) -> list[dict]:
    """Batching off / on, same camera count, same run of the bench."""
    out = []
    for on in (r for r in runs if r["batching"]):
        off = next((r for r in runs if not r["batching"] and r["cameras"] == on["cameras"]), None)
        if off is None:
            continue
        p95_on, p95_off = on["unlock_ms"]["p95"], off["unlock_ms"]["p95"]
        out.append({
            "cameras": on["cameras"],
            "p95_off_over_on": None if not (p95_on and p95_off) else p95_off / p95_on,
            "visit_cpu_off_over_on": off["visit_cpu_percent"] / on["visit_cpu_percent"] if on["visit_cpu_percent"] else None,
        })  # fmt: skip
    return out


def run_child(settings: Settings, clips: list[Path], cameras: int, max_batch: int, plan: DoorsPlan) -> dict:
    """Start `python -m facelock_mqtt.tools.bench_doors --child` and return what it reports."""
    command = [
        sys.executable, "-m", "facelock_mqtt.tools.bench_doors", "--child", "--data-dir", str(settings.data_dir),
        "--host", settings.mqtt.host, "--port", str(settings.mqtt.port), "--cameras", str(cameras),
        "--clips", *map(str, clips), "--threads", str(settings.model.threads), "--max-batch", str(max_batch),
        "--plan", json.dumps(asdict(plan)),
    ]  # fmt: skip
    if settings.model.bundle is not None:
        command += ["--bundle", str(settings.model.bundle)]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120 + plan.seconds)
    if done.returncode != 0:
        raise BenchError(f"doors: service child with {cameras} camera(s) failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class FaceClock:
    """When each door was handed the first frame of each visit (the door's own `process`, observed)."""

    def __init__(self, service: Service, doors: list[str], frames: list[int], fps: float) -> None:
        self.frames, self.fps = frames, fps  # the first frame index of each visit
        self.seen: dict[str, list[float | None]] = {door: [None] * len(frames) for door in doors}
        self.started: dict[str, float] = {}  # clip time 0 of each door, on the monotonic clock
        for name, door in service.doors.items():
            door.process = self._observe(name, door.process)

    def _observe(self, name: str, process: Callable[[Frame], None]) -> Callable[[Frame], None]:
        def observed(frame: Frame) -> None:
            position = frame.pts or 0.0
            self.started.setdefault(name, frame.ts - position)
            index = round(position * self.fps)
            for number, first in enumerate(self.frames):
                if name in self.seen and self.seen[name][number] is None and index >= first:
                    self.seen[name][number] = frame.ts
            process(frame)

        return observed


def _child(args: argparse.Namespace) -> dict:
    plan = DoorsPlan(**{**json.loads(args.plan), "cameras": (args.cameras,)})
    visits, idle = args.clips[:VISITED], args.clips[VISITED]
    urls = [visits[i] if i < VISITED else idle for i in range(args.cameras)]
    model = {"threads": args.threads, "max_batch": args.max_batch, "bundle": args.bundle}
    settings = load_settings(
        data_dir=args.data_dir,
        model={k: v for k, v in model.items() if v is not None},
        mqtt={"host": args.host, "port": args.port, "client_id": f"bench_doors_{os.getpid()}"},
        cameras=[{"name": f"door{i}", "url": str(url), "fps": plan.fps} for i, url in enumerate(urls)],
        decision={"cooldown_s": 2.0},
        lock={"relock_s": 1.0},
        lockout={"max_failures": 100},
        liveness={"models": args.data_dir / "no-liveness", "required": False},
    )
    service = Service(settings)
    starts = [plan.frame(s) for s in plan.visit_starts()]
    clock = FaceClock(service, [f"door{i}" for i in range(min(VISITED, args.cameras))], starts, plan.fps)
    try:
        service.start()
        anchor = _wait_for_start(clock, "door0")
        batcher = service.recognizer.engine.batcher
        _sleep_until(anchor + plan.quiet_start)
        gated = _gated(service)
        idle_cpu, idle_wall, by_thread = _cpu_between(anchor + plan.quiet_start, anchor + plan.quiet_start + plan.quiet_s)
        gated = _gated(service) - gated
        before = batcher.stats if batcher is not None else None
        visit_cpu = visit_wall = 0.0
        for start in plan.visit_starts()[1:]:
            cpu, wall, _ = _cpu_between(anchor + start, anchor + start + plan.stay_s)
            visit_cpu, visit_wall = visit_cpu + cpu, visit_wall + wall
        _sleep_until(anchor + plan.seconds)
        after = batcher.stats if batcher is not None else None
        frames = sum(d.stats.frames for d in service.doors.values())
        decisions = sum(d.stats.decisions for d in service.doors.values())
        errors = sum(d.stats.errors for d in service.doors.values())
    finally:
        service.stop()
    visited = [f"door{i}" for i in range(min(VISITED, args.cameras))]
    return {
        "cameras": args.cameras,
        "max_batch": args.max_batch,
        "idle_window_s": idle_wall,
        "idle_cpu_percent": 100 * idle_cpu / idle_wall,
        "idle_cpu_percent_per_camera": 100 * idle_cpu / idle_wall / args.cameras,
        "idle_frames_past_gate": gated,
        "idle_cpu_percent_by_thread": {k: 100 * v / idle_wall for k, v in sorted(by_thread.items()) if v > 0},
        "visit_window_s": visit_wall,
        "visit_cpu_percent": 100 * visit_cpu / visit_wall,
        "embedding_runs": _runs(before, after),
        "frames": frames,
        "decisions": decisions,
        "errors": errors,
        "face_ts": [[clock.seen[door][n] for door in visited] for n in range(len(starts))],
        "clip_start_offsets_ms": {d: round(1000 * (t - anchor), 1) for d, t in sorted(clock.started.items())},
    }


def _gated(service: Service) -> int:
    """Frames past the gate so far, over all doors."""
    return sum(door.stats.gated for door in service.doors.values())


def _runs(before, after) -> dict | None:
    """Embedding runs during the timed visits (None when batching is off: one run per face)."""
    if before is None:
        return None
    sizes = {n: after.sizes.get(n, 0) - before.sizes.get(n, 0) for n in after.sizes}
    return {"runs": after.runs - before.runs, "faces": after.faces - before.faces,
            "sizes": {str(n): c for n, c in sorted(sizes.items()) if c}}  # fmt: skip


def _wait_for_start(clock: FaceClock, door: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while door not in clock.started:
        if time.monotonic() > deadline:
            raise BenchError(f"doors: {door} got no frame within {timeout:.0f} s")
        time.sleep(0.01)
    return clock.started[door]


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _cpu_between(start: float, end: float) -> tuple[float, float, dict[str, float]]:
    """Process CPU seconds, wall seconds and CPU seconds by thread kind from `start` to `end`."""
    _sleep_until(start)
    threads, cpu, wall = thread_cpu_s(), time.process_time(), time.monotonic()
    _sleep_until(end)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    return cpu, wall, {k: v - threads.get(k, 0.0) for k, v in thread_cpu_s().items()}


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("facelock_mqtt.tools.bench_doors")
    parser.add_argument("--cameras", type=int, required=True)
    parser.add_argument("--clips", type=Path, nargs=VISITED + 1, required=True, help="visit clips, then the idle clip")
    parser.add_argument("--max-batch", type=int, default=BATCH_ON)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--plan", required=True, help="DoorsPlan as JSON")
    args = parser.parse_args(argv)
    print(json.dumps(_child(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
