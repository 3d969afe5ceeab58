"""The gate comparison (issue 13): motion, ml and both on the same clips.

Clips are door days (bench_clips: a synthetic entrance, real NUAA people visiting) with what
fools a pixel-change gate laid over them: a light switched on and off, shadows sweeping across,
headlights sweeping through a window, rain with heavy sensor noise; and a data-mismatch clip the
ML gate never saw in training (another entrance, light from the side, other people). Training
clips (`training_clips`) use other seeds, other people and other entrances than the bench clips.

Per gate and clip: false triggers per hour (gate openings while nobody is there), frames passed
per hour with nobody there (each one costs a face search), visits missed (no frame passed while
the face was whole in view), CPU per frame and per hour (the gate, plus the face searches it
asked for), and the first-decision latency the gate adds (first whole-face frame to first passed
frame).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..pipeline.engine import FaceEngine
from ..pipeline.gate import MotionGate
from ..pipeline.imageio import read_image
from ..pipeline.ml_gate import ActivityModel, BothGates, MlGate
from ..recognizer import resolve_bundle
from ..settings import GateSettings, Settings
from .bench_clips import HEIGHT, WIDTH, DoorDay, Scene, background, person_patches, plan_door_day, session_frames

Effect = Callable[[int, np.ndarray, np.random.Generator], np.ndarray]
TRAIN_PEOPLE = (("s0002", "01"), ("s0003", "01"), ("s0005", "01"), ("s0006", "01"))
BENCH_PEOPLE = (("s0001", "02"), ("s0004", "02"), ("s0007", "02"))
MISMATCH_PEOPLE = (("s0008", "02"), ("s0006", "03"), ("s0007", "03"))
FPS = 5.0


def _soft_band(width: int, centre: float, half: float) -> np.ndarray:
    x = np.arange(width, dtype=np.float32)
    return np.clip(1.0 - np.abs(x - centre) / half, 0.0, 1.0)


def light_switch(period_s: float = 40.0) -> Effect:
    """The hall light goes on and off: the whole frame jumps between two gains."""
    def effect(i: int, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        on = (i / FPS) % period_s < period_s / 2
        return cv2.convertScaleAbs(frame, alpha=1.0 if on else 0.45)
    return effect


def shadows(period_s: float = 15.0) -> Effect:
    """A soft shadow (someone passing a window, a tree in the wind) sweeps across the scene."""
    def effect(i: int, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        phase = ((i / FPS) % period_s) / 4.0  # a 4 s sweep, then quiet
        if phase >= 1.0:
            return frame
        band = 1.0 - 0.55 * _soft_band(WIDTH, -100 + phase * (WIDTH + 200), 110)
        return (frame * band[None, :, None]).astype(np.uint8)
    return effect


def headlights(period_s: float = 20.0) -> Effect:
    """A car's headlights sweep through a side window: a bright moving blob."""
    def effect(i: int, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        phase = ((i / FPS) % period_s) / 2.0
        if phase >= 1.0:
            return frame
        x = np.arange(WIDTH, dtype=np.float32)[None, :]
        y = np.arange(HEIGHT, dtype=np.float32)[:, None]
        cx = WIDTH * (1.1 - 1.2 * phase)
        blob = 150.0 * np.exp(-(((x - cx) / 120) ** 2 + ((y - 0.4 * HEIGHT) / 160) ** 2))
        return np.clip(frame + blob[..., None], 0, 255).astype(np.uint8)
    return effect


def rain() -> Effect:
    """Rain on the lens and a noisy night sensor: heavy noise and bright streaks every frame."""
    def effect(i: int, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noisy = frame.astype(np.int16) + rng.normal(0, 14, frame.shape[:2]).astype(np.int16)[..., None]
        for _ in range(40):
            x, y = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT - 40))
            noisy[y : y + 30, x : x + 2] += 70
        return np.clip(noisy, 0, 255).astype(np.uint8)
    return effect


def side_light() -> Effect:
    """Light from one side, as the ML gate never saw it: a strong left-to-right gain ramp."""
    ramp = np.linspace(0.35, 1.35, WIDTH, dtype=np.float32)[None, :, None]
    def effect(i: int, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(frame * ramp, 0, 255).astype(np.uint8)
    return effect


@dataclass
class GateClip:
    name: str
    day: DoorDay
    base: np.ndarray
    effect: Effect | None
    seed: int

    def frames(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        for index, frame in enumerate(self.day.frames(Scene(self.base, self.seed))):
            yield frame if self.effect is None else self.effect(index, frame, rng)


def visitors(engine: FaceEngine, data: Path, people: tuple[tuple[str, str], ...], count: int) -> list:
    out = []
    for number in range(count):
        person, session = people[number % len(people)]
        paths = session_frames(data, person, session)
        faces = engine.faces(read_image(paths[0]))
        out.append((person, False, person_patches(paths, max(faces, key=lambda f: f.area).box)))
    return out


def bench_clips(engine: FaceEngine, data: Path, seconds: float, visits: int) -> list[GateClip]:
    """The comparison's clips: the door day, the four that fool a motion gate, the mismatch."""
    who = visitors(engine, data, BENCH_PEOPLE, visits)
    base = background(seed=7)
    clips = [GateClip("door day", plan_door_day(seconds, FPS, who, seed=3), base, None, 11)]
    for number, (name, effect) in enumerate(
        [("light switched", light_switch()), ("moving shadows", shadows()), ("headlights", headlights()), ("rain, noise", rain())]
    ):
        clips.append(GateClip(name, plan_door_day(seconds, FPS, who, seed=20 + number), base, effect, 30 + number))
    mismatch = visitors(engine, data, MISMATCH_PEOPLE, visits)
    clips.append(GateClip("mismatch (side light, other door)", plan_door_day(seconds, FPS, mismatch, seed=40),
                          background(seed=99), side_light(), 41))  # fmt: skip
    return clips


def training_clips(engine: FaceEngine, data: Path, seconds: float, visits: int) -> list[GateClip]:
    """Clips for `facelock collect`: other people, other entrances, other seeds than the bench's."""
    who = visitors(engine, data, TRAIN_PEOPLE, visits)
    clips = []
    effects = [None, light_switch(31.0), shadows(11.0), headlights(17.0), rain()] * 2  # ten sessions to split
    for number, effect in enumerate(effects):
        base = background(seed=100 + number)
        clips.append(GateClip(f"train{number}", plan_door_day(seconds, FPS, who, seed=200 + number), base, effect, 300 + number))
    return clips


@dataclass
class GateRun:
    passed: list[bool]
    cpu_s: float = 0.0


def run_gates(gates: dict[str, object], clip: GateClip) -> dict[str, GateRun]:
    """Every gate on the same frames in lockstep: each frame is rendered once, each gate timed alone."""
    runs = {kind: GateRun([]) for kind in gates}
    for index, frame in enumerate(clip.frames()):
        for kind, gate in gates.items():
            start = time.process_time()
            result = gate.update(frame, index / FPS)
            runs[kind].cpu_s += time.process_time() - start
            runs[kind].passed.append(result.passed)
    return runs


def score_run(clip: GateClip, run: GateRun, settings: GateSettings, search_ms: float) -> dict:
    day = clip.day
    margin = round(settings.hold_s * FPS) + 1
    busy = np.zeros(day.n_frames, bool)
    for visit in day.visits:
        busy[visit.start : visit.start + visit.frames + margin] = True
    passed = np.asarray(run.passed)
    openings = passed & ~np.concatenate([[False], passed[:-1]])
    hours = day.n_frames / FPS / 3600.0
    missed, delays = 0, []
    for visit in day.visits:
        window = passed[visit.first_whole : visit.start + visit.frames]
        if not window.any():
            missed += 1
        else:
            delays.append(int(np.argmax(window)) / FPS)
    idle = int(np.sum(passed & ~busy))
    gate_ms = 1000.0 * run.cpu_s / day.n_frames
    return {
        "false_triggers_per_hour": round(float(np.sum(openings & ~busy)) / hours, 1),
        "idle_frames_passed_per_hour": round(idle / hours, 1),
        "visits": len(day.visits), "visits_missed": missed,
        "gate_ms_per_frame": round(gate_ms, 3),
        "cpu_s_per_hour": round((gate_ms * FPS * 3600.0 + search_ms * float(passed.sum()) / hours) / 1000.0, 1),
        "first_decision_delay_s": round(statistics.median(delays), 2) if delays else None,
    }  # fmt: skip


def face_search_ms(engine: FaceEngine, clip: GateClip, repeats: int = 10) -> float:
    """What one passed frame costs downstream: the detector and, with a face, the embedder."""
    frame = next(f for i, f in enumerate(clip.frames()) if i == clip.day.visits[0].first_whole + 2)
    engine.analyze(frame)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        engine.analyze(frame)
        times.append(time.process_time() - start)
    return 1000.0 * statistics.median(times)


def compare(gates: Callable[[], dict[str, object]], clips: list[GateClip], settings: GateSettings, search_ms: float) -> dict:
    """{clip: {gate kind: scores}}; `gates()` builds fresh gates for each clip."""
    results = {}
    for clip in clips:
        runs = run_gates(gates(), clip)
        results[clip.name] = {kind: score_run(clip, run, settings, search_ms) for kind, run in runs.items()}
    return results


def gate_bench(settings: Settings, data: Path, bundle: Path, seconds: float, visits: int) -> dict:
    """The whole comparison: clips, the three gate kinds, the face-search cost, the table."""
    engine = FaceEngine(resolve_bundle(settings.model, settings.data_dir), settings.model, settings.quality)
    model = ActivityModel(bundle, threads=1)
    gate_settings = settings.gate.model_copy(update={"kind": "motion", "ml_model": None})

    def gates() -> dict[str, object]:
        return {
            "motion": MotionGate(gate_settings),
            "ml": MlGate(gate_settings, model),
            "both": BothGates(MotionGate(gate_settings), MlGate(gate_settings, model)),
        }

    clips = bench_clips(engine, data, seconds, visits)
    search_ms = face_search_ms(engine, clips[0])
    results = compare(gates, clips, gate_settings, search_ms)
    return {"seconds": seconds, "fps": FPS, "visits": visits, "face_search_ms": search_ms, "bundle": str(bundle),
            "model": model.manifest.get("report", {}).get("params"), "clips": results}  # fmt: skip


def table(results: dict) -> str:
    header = "| clip | gate | false triggers / h | idle frames passed / h | visits missed | gate ms / frame | CPU s / h | gate delay s |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for clip, kinds in results.items():
        for kind, r in kinds.items():
            lines.append(
                f"| {clip} | {kind} | {r['false_triggers_per_hour']} | {r['idle_frames_passed_per_hour']} | "
                f"{r['visits_missed']} of {r['visits']} | {r['gate_ms_per_frame']} | {r['cpu_s_per_hour']} | "
                f"{r['first_decision_delay_s']} |"
            )
    return "\n".join(lines)


def print_gate_bench(settings: Settings, data: Path, bundle: Path, smoke: bool, json_path: Path | None) -> int:
    import json

    report = gate_bench(settings, data, bundle, 60.0 if smoke else 300.0, 2 if smoke else 6)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gate comparison: {report['seconds']:.0f} s clips at {report['fps']:g} fps, {report['visits']} visits each; "
          f"a face search costs {report['face_search_ms']:.1f} ms CPU\n")  # fmt: skip
    print(table(report["clips"]))
    return 0
