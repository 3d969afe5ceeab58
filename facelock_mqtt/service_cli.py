"""CLI commands of the service layer: `run`, `replay`, `audit`, `liveness install|download`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from .cli_audit import add_audit_commands, run_audit
from .errors import BrokerUnavailable, ConfigError
from .guards.liveness import WEIGHTS_URL
from .remote.worker import Worker
from .service import Service, replay_camera
from .settings import MqttSettings, Settings
from .tools.bench import add_bench_command

log = logging.getLogger(__name__)

REPLAY_BROKER_WAIT_S = 10.0  # how long `replay` waits for the broker before it gives up


def _run(args: argparse.Namespace, settings: Settings) -> int:
    service = Service(settings, panel=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    service.start()
    log.info("FaceLock running: %d door(s); Ctrl-C to stop", len(service.doors))
    done.wait()
    service.stop()
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    """The live pipeline on a file, as fast as it goes, one JSON line per decision."""
    camera = replay_camera(args.video, args.door, args.fps)

    def print_event(event: dict) -> None:
        print(json.dumps(event), flush=True)

    service = Service(settings, cameras=[camera], realtime=False, on_event=print_event)
    service.bridge.start()  # the broker first: without it no decision could drive the door
    try:
        service.bridge.mqtt.wait_connected(REPLAY_BROKER_WAIT_S)
    except BrokerUnavailable:
        service.stop()
        raise  # a one-line error and exit code 2, like every FaceLockError
    service.start_cameras()
    service.wait()
    service.stop()
    source = service.sources[camera.name]
    if source.stats.frames_decoded == 0:  # an unreadable file must not pass for a clip with nobody in it
        raise ConfigError(f"replay: no frame could be read from {args.video} ({source.last_error or 'no frames'})")
    return 0


def _liveness(args: argparse.Namespace, settings: Settings) -> int:
    """`liveness install` converts the weights in a folder; `liveness download` fetches them first."""
    from .guards.liveness import MANIFEST
    from .guards.liveness_install import download_and_install, install

    out = args.out or settings.liveness.models or settings.data_dir / "liveness"
    if args.liveness_command == "download" and args.if_missing and (out / MANIFEST).is_file():
        print(f"liveness models already installed: {out / MANIFEST}")
        return 0
    if args.liveness_command == "install":
        manifest = install(args.weights, out)
    else:
        manifest = download_and_install(args.dest or settings.data_dir / "liveness-weights", out, args.base_url)
    print(f"liveness models installed: {manifest}")
    return 0


def _drift(args: argparse.Namespace, settings: Settings) -> int:
    """Each door's drift statistics (guards/drift.py) as the running service last saved them."""
    from .guards.drift import error_analysis, format_conditions, format_report, saved_monitors

    if args.write_reference:
        return _write_drift_reference(args.write_reference, settings)
    monitors = {d: m for d, m in saved_monitors(settings.data_dir, settings.drift).items() if args.door in (None, d)}
    if args.by_condition:
        result = {door: error_analysis(m.conditions) for door, m in monitors.items()}
        text = format_conditions(result)
    else:
        result = {door: m.report() for door, m in monitors.items()}
        text = format_report(result)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


def _collect(args: argparse.Namespace, settings: Settings) -> int:
    """Frames of clips as an auto-labelled activity-gate dataset (tools/collect.py)."""
    from .pipeline.engine import FaceEngine
    from .recognizer import resolve_bundle
    from .tools.collect import collect_videos

    engine = FaceEngine(resolve_bundle(settings.model, settings.data_dir), settings.model, settings.quality)
    counts = collect_videos(args.videos, args.out, engine, settings.gate, settings.quality, args.fps, args.every)
    print(json.dumps(counts, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in counts.items()))
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    """`facelock worker`: answer the doors' remote verification requests (remote/worker.py)."""
    client_id = args.client_id or f"facelock-worker-{socket.gethostname()}-{os.getpid()}".replace(".", "-")
    mqtt = MqttSettings.model_validate({**settings.mqtt.model_dump(), "client_id": client_id})
    worker = Worker(settings.model_copy(update={"mqtt": mqtt}), client_id)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    worker.start()  # BrokerUnavailable: a one-line error
    print(f"worker {client_id} ready", flush=True)  # tests and scripts wait for this line
    done.wait()
    worker.stop()
    return 0


def _write_drift_reference(data: Path, settings: Settings) -> int:
    """The shipped model-card reference of the drift monitor, from the NUAA live webcam frames."""
    from .guards.drift import REFERENCE_FILE, reference_from_faces
    from .pipeline.engine import FaceEngine
    from .pipeline.imageio import read_image
    from .recognizer import resolve_bundle

    engine = FaceEngine(resolve_bundle(settings.model, settings.data_dir), settings.model, settings.quality)
    results = [engine.analyze(read_image(p)) for p in sorted((data / "nuaa" / "live").glob("*/*.jpg"))]
    reference = reference_from_faces([r for r in results if r is not None], "NUAA live webcam frames (model card data)")
    REFERENCE_FILE.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"{REFERENCE_FILE}: {reference['faces']} faces")
    return 0


def _add_liveness_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("liveness", help="install the liveness (anti-spoofing) models")
    verbs = p.add_subparsers(dest="liveness_command", required=True)
    out_help = "folder the service loads them from (default: liveness.models, else <data_dir>/liveness)"
    v = verbs.add_parser("install", help="convert the two MiniFASNet .pth files (SHA-256 checked) to ONNX")
    v.add_argument("--weights", type=Path, required=True, help="folder holding the two .pth files")
    v.add_argument("--out", type=Path, help=out_help)
    v = verbs.add_parser("download", help="download the MiniFASNet weights (SHA-256 checked), then install them")
    v.add_argument("--dest", type=Path, help="folder for the .pth files (default: <data_dir>/liveness-weights)")
    v.add_argument("--out", type=Path, help=out_help)
    v.add_argument("--if-missing", action="store_true", help="do nothing when the models are already installed")
    v.add_argument("--base-url", default=WEIGHTS_URL, help="a mirror of the published files (SHA-256 still checked)")


def add_commands(sub: argparse._SubParsersAction, command: Callable) -> None:
    sub.add_parser("run", help="run the door service (embedded MQTT broker when none is configured)")
    p = sub.add_parser("replay", help="run the live pipeline on a video file or image sequence")
    p.add_argument("video", help="video file, or an image-sequence pattern such as frames/%%04d.jpg")
    p.add_argument("--door", required=True, help="door (camera) name the decisions are published for (a-z, 0-9, _)")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate of an image sequence (0 to 60; default 10)")
    add_audit_commands(sub)
    _add_liveness_commands(sub)
    p = sub.add_parser("collect", help="record clips' frames as an auto-labelled activity-gate dataset")
    p.add_argument("videos", nargs="+", type=Path, help="video files (or a camera's recording), one session each")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (<label>/<session>_<frame>.png)")
    p.add_argument("--fps", type=float, default=5.0, help="frame rate of the clips (the motion gate's clock)")
    p.add_argument("--every", type=int, default=1, help="keep every N-th frame (the gate still sees all)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    command("collect")(_collect)
    p = sub.add_parser("drift", help="has a camera drifted from its reference (light, focus, aim, scores)? PSI per statistic")
    p.add_argument("--door", help="only this door")
    p.add_argument("--by-condition", action="store_true", help="decisions by brightness and face-size band instead")
    p.add_argument("--json", action="store_true", help="JSON: {door: {statistic: {psi, drifted, ...}}}")
    p.add_argument("--write-reference", type=Path, metavar="DATA", help=argparse.SUPPRESS)  # ships the model-card reference
    command("drift")(_drift)
    command("run")(_run)
    p = sub.add_parser("worker", help="answer the doors' remote verification requests over MQTT 5 (docs/REMOTE.md)")
    p.add_argument("--client-id", help="this worker's MQTT client id, unique per worker (default: host name and pid)")
    command("worker")(_worker)
    command("replay")(_replay)
    command("audit")(run_audit)
    command("liveness")(_liveness)
    add_bench_command(sub, command)
