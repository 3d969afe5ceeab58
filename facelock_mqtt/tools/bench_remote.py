"""Benchmark of remote verification (issue 15): attempts per second and decision latency with 1,
2 and 4 `facelock worker` processes on this machine against Mosquitto, against local mode, and
a worker killed in mid-attempt.

One "attempt" is what a door sends when it decides: k = 2 usable frames of the enrolled person
(aligned crops + both liveness patches each; NUAA s0001 session 02, s0001 enrolled from session
01). Local mode does the same work in this process (SFace on both crops, match, both MiniFASNet
models on both frames). `--doors` threads issue attempts back to back for `--seconds`, as that
many busy doors would; latency is from the request to the scored answer (the edge's own
detect/align/quality is the same in both modes and reported apart). Every model runs on 1 thread.

    python -m facelock_mqtt.tools.bench_remote --data ../shared/data --weights ../shared/models/minifasnet
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..guards.liveness import LivenessModel, load_operating_point
from ..guards.liveness_install import install
from ..homeassistant.broker import free_port, new_broker
from ..pipeline.imageio import read_image
from ..recognizer import Recognizer
from ..remote import EdgeVerifier, RemoteFailure, RemoteLiveness, RemoteVerifier
from ..settings import load_settings

SECRET = "bench-remote-verification-secret"
PERSON = "s0001"


def nuaa(data: Path, session: str) -> list[Path]:
    files = [p for p in (data / "nuaa" / "live" / PERSON).glob("*.jpg") if p.stem.split("_")[3] == session]
    return sorted(files, key=lambda p: int(p.stem.split("_")[-1]))


def start_worker(name: str, root: Path, settings, bundle: Path, liveness: Path) -> subprocess.Popen:
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FACELOCK_DATA_DIR": str(data), "FACELOCK_OPTIONS_FILE": str(data / "none.json"),
           "FACELOCK_MQTT__HOST": settings.mqtt.host, "FACELOCK_MQTT__PORT": str(settings.mqtt.port),
           "FACELOCK_MODEL__BUNDLE": str(bundle), "FACELOCK_MODEL__THREADS": "1",
           "FACELOCK_LIVENESS__MODELS": str(liveness), "FACELOCK_VERIFY__SECRET": SECRET, "FACELOCK_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "facelock_mqtt.cli", "worker", "--client-id", name],
                            env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
    if "ready" not in (proc.stdout.readline() or ""):
        raise RuntimeError(f"worker {name} did not start")
    return proc


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(attempt, doors: int, seconds: float, during=None, workers: list[subprocess.Popen] = ()) -> dict:
    """`doors` threads running `attempt()` back to back; throughput, latency, failures, and the
    CPU time per attempt of this (the door's) process and of the worker processes."""
    door_cpu, worker_cpu = time.process_time(), sum(cpu_s(w.pid) for w in workers)
    results: list[tuple[float, float, str | None]] = []  # (start, latency, failure)
    lock = threading.Lock()
    start = time.perf_counter()
    end = start + seconds

    def door() -> None:
        while (t0 := time.perf_counter()) < end:
            failure = None
            try:
                attempt()
            except RemoteFailure as exc:
                failure = str(exc)
            with lock:
                results.append((t0 - start, time.perf_counter() - t0, failure))

    threads = [threading.Thread(target=door) for _ in range(doors)]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    door_cpu, worker_cpu = (
        time.process_time() - door_cpu,
        sum(cpu_s(w.pid) for w in workers if w.poll() is None) - worker_cpu,
    )
    ok = [lat for _, lat, failure in results if failure is None]
    failed = [(t, lat, failure) for t, lat, failure in results if failure is not None]
    return {
        "attempts_per_s": len(ok) / elapsed,
        "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else None,
        "p95_ms": 1000 * float(np.percentile(ok, 95)) if ok else None,
        "attempts": len(results),
        "door_cpu_ms": 1000 * door_cpu / max(1, len(results)),
        "worker_cpu_ms": 1000 * worker_cpu / max(1, len(ok)) if workers else None,
        "failed": len(failed),
        "failures": failed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared face data folder (NUAA)")
    parser.add_argument("--weights", type=Path, required=True, help="folder of the two MiniFASNet .pth files")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load run")
    parser.add_argument("--doors", type=int, default=4, help="doors sending attempts back to back")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker process counts")
    parser.add_argument("--deadline", type=float, default=2.0, help="verify.deadline_s")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = run(args, Path(tmp))
    print(json.dumps(out, indent=2) if args.json else table(out, args))
    return 0


def run(args: argparse.Namespace, root: Path) -> dict:
    broker = new_broker(free_port(), "mosquitto")
    broker.start()
    liveness_dir = root / "liveness"
    install(args.weights, liveness_dir)
    settings = load_settings(
        data_dir=root / "door", model={"threads": 1}, liveness={"models": liveness_dir},
        mqtt={"host": broker.host, "port": broker.port, "client_id": "bench_door"},
        verify={"mode": "remote", "secret": SECRET, "deadline_s": args.deadline},
    )  # fmt: skip
    rec = Recognizer(settings.data_dir, settings.model, settings.quality, settings.match)
    rec.enroll(PERSON, [(str(p), read_image(p)) for p in nuaa(args.data, "01")[:3]])
    images = [read_image(p) for p in nuaa(args.data, "02")[:2]]
    t0 = time.perf_counter()
    located = [rec.engine.locate(image) for image in images]
    edge_ms = 1000 * (time.perf_counter() - t0) / len(images)
    pending = [(image, result, 0.0) for image, result in zip(images, located, strict=True)]
    local_liveness = LivenessModel.from_dir(liveness_dir, threads=1)
    matcher = rec.matcher

    def local_attempt() -> None:
        crops = [r.crop for _, r, _ in pending]
        for (_, result, _), embedding in zip(pending, rec.engine.embed_aligned(crops), strict=True):
            matcher.match(embedding, result.quality)
        local_liveness.assess([(image, result.face) for image, result, _ in pending])

    local_attempt()  # warm-up: the first run of each session allocates its arenas
    out: dict = {
        "edge_ms_per_frame": edge_ms,
        "cores": os.cpu_count(),
        "doors": args.doors,
        "local": load(local_attempt, args.doors, args.seconds),
    }
    client = RemoteVerifier(settings.mqtt, settings.verify, "bench_door-verify")
    client.start()
    edge = EdgeVerifier(client, rec.engine, rec.fingerprint, auto=False)
    liveness = RemoteLiveness(load_operating_point())

    def remote_attempt() -> None:
        found = edge.identify("bench", pending, matcher, liveness)
        if not found[0].match.accepted:
            raise RemoteFailure("the enrolled person was not matched")

    try:
        for count in args.workers:
            workers = [start_worker(f"w{i}", root, settings, rec.bundle.path, liveness_dir) for i in range(count)]
            edge.publish_gallery(matcher)
            time.sleep(0.5)
            for _ in range(count):
                remote_attempt()  # warm-up of each worker (the broker hands them out in turn)
            out[f"remote_{count}"] = load(remote_attempt, args.doors, args.seconds, workers=workers)
            for proc in workers:
                proc.terminate()
                proc.wait(10)
        out["kill"] = kill_run(remote_attempt, root, settings, rec, liveness_dir, edge, matcher, args)
    finally:
        client.stop()
        rec.close()
        broker.stop()
    return out


def kill_run(remote_attempt, root, settings, rec, liveness_dir, edge, matcher, args) -> dict:
    """2 workers; one is SIGKILLed a third into the run while requests are in flight."""
    workers = [start_worker(f"k{i}", root, settings, rec.bundle.path, liveness_dir) for i in range(2)]
    killed_at: list[float] = []
    start = time.perf_counter()

    def kill() -> None:
        time.sleep(args.seconds / 3)
        killed_at.append(time.perf_counter() - start)
        workers[0].send_signal(signal.SIGKILL)

    result = load(remote_attempt, args.doors, args.seconds, during=kill)
    workers[1].terminate()
    workers[1].wait(10)
    failures = result.pop("failures")
    result["killed_at_s"] = killed_at[0]
    result["failure_latency_ms"] = [round(1000 * lat) for _, lat, _ in failures]
    result["failure_reasons"] = sorted({f for _, _, f in failures})
    result["last_failure_started_s"] = max((t for t, _, _ in failures), default=None)
    return result


def table(out: dict, args: argparse.Namespace) -> str:
    rows = [("local (in the door's process)", out["local"])] + [
        (f"remote, {n} worker process{'es' if n > 1 else ''}", out[f"remote_{n}"]) for n in args.workers
    ]
    lines = [
        (
            f"{out['doors']} doors sending attempts back to back (2 frames: 2 crops + 4 liveness patches), "
            f"{args.seconds:g} s per run, {out['cores']} cores; edge detect/align/quality "
            f"{out['edge_ms_per_frame']:.1f} ms/frame"
        ),
        "",
        "| mode | attempts/s | p50 ms | p95 ms | attempts | failed | door CPU ms/attempt | worker CPU ms/attempt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        worker = "-" if r["worker_cpu_ms"] is None else f"{r['worker_cpu_ms']:.0f}"
        lines.append(f"| {name} | {r['attempts_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['attempts']} | "
                     f"{r['failed']} | {r['door_cpu_ms']:.0f} | {worker} |")  # fmt: skip
    k = out["kill"]
    lines += ["", (f"worker killed at {k['killed_at_s']:.1f} s of {args.seconds:g} s (2 workers): {k['attempts']} attempts, "
              f"{k['failed']} failed ({', '.join(k['failure_reasons']) or '-'}), failure latencies {k['failure_latency_ms']} ms, "
              f"last failed attempt started at {k['last_failure_started_s']} s; {k['attempts_per_s']:.1f} attempts/s overall")]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
