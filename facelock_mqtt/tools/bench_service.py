"""Benchmarks 3 and 4 (service side): decision latency through a real broker, and the memory
and idle CPU of a running service with one and with four cameras.

Latency: a snapshot camera of a real service is fed JPEG frames at the camera's rate (empty
scene, then the enrolled person appears whole); a separate MQTT client times the unlock
(`lock/state` UNLOCKED, the state Home Assistant shows as `unlocked`) and the decision event
from the moment the first frame showing the face was handed over.
Memory and idle CPU: a child process runs the service on N looping-free clip cameras; it
reports its own peak RSS (VmHWM) and its CPU time over a window where the scene is static.

    python -m facelock_mqtt.tools.bench_service --child ...   (used by `facelock bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Self

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..homeassistant.broker import free_port, new_broker
from ..pipeline.imageio import encode_jpeg
from ..service import Service
from ..settings import Settings, load_settings
from .bench_clips import BenchError, Placement, Scene, background

SNAPSHOT_TOPIC = "bench/{door}/snapshot"
GAP_S = 3.0  # empty scene between trials: longer than the cooldown, so each trial starts afresh
TRIAL_TIMEOUT_S = 5.0
UNLOCKED = frozenset({b"UNLOCKED"})  # what the user waits for (UNLOCKING is the relay's actuation)


class BenchBroker:
    """FaceLock's embedded broker on a free port: Mosquitto when it is installed, otherwise amqtt."""

    def __init__(self, workdir: Path) -> None:  # `workdir` unused: the broker keeps a private folder
        self._broker = new_broker(free_port())
        self.host, self.port, self.kind = self._broker.host, self._broker.port, self._broker.kind

    def __enter__(self) -> Self:
        self._broker.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._broker.stop()


class Subscriber:
    """A separate MQTT client that notes when each message arrives (monotonic clock)."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.ready.set()
        self.client.connect(host, port)
        self.client.subscribe([(topic, 1) for topic in topics])
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), message.topic, message.payload))

    def first(self, topic: str, payloads: frozenset[bytes], after: float) -> float | None:
        with self._lock:
            times = [t for t, top, p in self.messages if top == topic and p in payloads and t >= after]
        return min(times) if times else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class SnapshotCamera:
    """Pushes JPEG frames into a snapshot source on one steady cadence, as a real camera does."""

    def __init__(self, source, scene: Scene, fps: float) -> None:
        self.source, self.scene, self.period = source, scene, 1.0 / fps
        self.next_due = time.monotonic()

    def show(self, person: list[Placement] | None, seconds: float, stop=lambda: False) -> float | None:
        """`person` (None: the empty scene) for up to `seconds` or until `stop()`; when the first
        of these frames was pushed."""
        first, index, until = None, 0, time.monotonic() + seconds
        while time.monotonic() < until and not stop():
            jpeg = encode_jpeg(self.scene.render(1.0, person[index % len(person)] if person else None))
            time.sleep(max(0.0, self.next_due - time.monotonic()))
            pushed = time.monotonic()
            self.source.push(jpeg)
            first = pushed if first is None else first
            index += 1
            self.next_due += self.period
        return first


def decision_latency(settings: Settings, person: list[Placement], trials: int, fps: float, door: str) -> dict:
    """Latency from the first face frame to UNLOCKED (and to the event) seen by a subscriber."""
    service = Service(settings)
    base = settings.mqtt.base_topic
    state, event = f"{base}/{door}/lock/state", f"{base}/{door}/event"
    watcher = Subscriber(settings.mqtt.host, settings.mqtt.port, [state, event])
    unlock_ms, event_ms, gap_ms, failed, first_trial_ms = [], [], [], 0, None
    try:
        service.start()
        if not (service.bridge.mqtt.connected.wait(10) and watcher.ready.wait(10)):
            raise BenchError("latency: the service or the subscriber could not connect to the broker")
        camera = SnapshotCamera(service.sources[door], Scene(background()), fps)
        camera.show(None, GAP_S)  # the gate learns the scene
        for trial in range(trials + 1):  # trial 0 warms the service up (first inference, matcher)
            mark = time.monotonic()
            unlocked = partial(watcher.first, state, UNLOCKED, mark)
            shown = camera.show(person, TRIAL_TIMEOUT_S, lambda f=unlocked: f() is not None)
            camera.show(None, GAP_S)  # the person leaves; the last messages arrive meanwhile
            unlock = unlocked()
            recognized = [t for t, top, p in watcher.messages if top == event and t >= mark and b'"recognized"' in p]
            if unlock is None or shown is None:
                failed += 1
            elif trial == 0:
                first_trial_ms = 1000 * (unlock - shown)
            else:
                unlock_ms.append(1000 * (unlock - shown))
                event_ms.extend(1000 * (t - shown) for t in recognized[:1])
                gap_ms.extend(1000 * abs(t - unlock) for t in recognized[:1])  # state and event together
    finally:
        watcher.close()
        service.stop()
    return {
        "fps": fps,
        "trials": trials,
        "first_trial_ms": first_trial_ms,
        "unlocked": len(unlock_ms),
        "failed": failed,
        "unlock_ms": _percentiles(unlock_ms),
        "unlock_ms_each": [round(v, 1) for v in unlock_ms],
        "event_ms": _percentiles(event_ms),
        "event_vs_unlocked_ms": _percentiles(gap_ms),
        "frame_interval_ms": 1000 / fps,
        "frames_needed": settings.decision.k,
        "unlocking_s": settings.lock.unlocking_s,
    }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = np.sort(values)
    return {
        "p50": float(np.percentile(ordered, 50)),
        "p95": float(np.percentile(ordered, 95)),
        "max": float(ordered[-1]),
    }


def run_child(
    settings: Settings, clip: Path, cameras: int, warmup_s: float, seconds: float, gate_clip: Path | None = None
) -> dict:
    """Start `python -m facelock_mqtt.tools.bench_service --child` and return what it reports
    (with `gate_clip`, each camera's gate_url: its low-resolution sub-stream)."""
    command = [
        sys.executable, "-m", "facelock_mqtt.tools.bench_service", "--child", "--data-dir", str(settings.data_dir),
        "--host", settings.mqtt.host, "--port", str(settings.mqtt.port), "--clip", str(clip),
        "--cameras", str(cameras), "--warmup", str(warmup_s), "--seconds", str(seconds),
        "--threads", str(settings.model.threads), *(["--gate-clip", str(gate_clip)] if gate_clip else []),
    ]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120 + warmup_s + seconds)
    if done.returncode != 0:
        raise BenchError(f"service child with {cameras} camera(s) failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of this process by kind of thread: Python threads by name (without the door
    suffix), threads that Python did not start (the video decoder's, onnxruntime's) as `native`."""
    names = {t.native_id: re.sub(r"-[a-z0-9_]+$", "", t.name) for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        kind = names.get(int(task.name), "native")
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return totals


def _door_counts(service: Service) -> tuple[int, int]:
    """Frames seen and frames past the gate, over all doors."""
    doors = service.doors.values()
    return sum(d.stats.frames for d in doors), sum(d.stats.gated for d in doors)


def _child(args: argparse.Namespace) -> dict:
    gate = {"gate_url": str(args.gate_clip)} if args.gate_clip else {}
    cameras = [{"name": f"door{i}", "url": str(args.clip), "fps": 5.0, **gate} for i in range(args.cameras)]
    settings = load_settings(
        data_dir=args.data_dir,
        model={"threads": args.threads},
        mqtt={"host": args.host, "port": args.port, "client_id": f"bench_child_{os.getpid()}"},
        cameras=cameras,
        lockout={"max_failures": 100},
        liveness={"models": args.data_dir / "no-liveness", "required": False},
    )
    service = Service(settings)
    try:
        service.start()
        time.sleep(args.warmup)
        counts, threads = _door_counts(service), thread_cpu_s()
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(args.seconds)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        by_thread = {k: v - threads.get(k, 0.0) for k, v in thread_cpu_s().items()}
        frames, passed = (end - start for end, start in zip(_door_counts(service), counts, strict=True))
    finally:
        service.stop()
    return {"cameras": args.cameras, "peak_rss_mb": _peak_rss_mb(), "window_s": wall, "cpu_s": cpu,
            "frames": frames, "frames_past_gate": passed,
            "cpu_percent_by_thread": {k: 100 * v / wall for k, v in sorted(by_thread.items()) if v > 0}}  # fmt: skip


def child_parser(module: str) -> argparse.ArgumentParser:
    """The options every bench child process takes (`python -m <module> --child ...`)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = child_parser("facelock_mqtt.tools.bench_service")
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--gate-clip", type=Path, help="the clip's low-resolution sub-stream, as each camera's gate_url")
    args = parser.parse_args(argv)
    print(json.dumps(_child(args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
