"""Presentation attacks and genuine visits of every NUAA person, through the whole service.

For each person with printed-photo attack frames: a fresh data folder, liveness installed from
the published weights (`facelock liveness install`), the person enrolled from live frames, then
two clips replayed through the real `Service` on an embedded broker: the print attack (every
attack frame, in capture order) and a genuine visit (live frames of another session, or the
other half of the only session). Counts unlocks, i.e. releases of the door relay.

    python -m facelock_mqtt.tools.presentation_sweep --weights ../shared/models/minifasnet --json sweep.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import cv2

from ..errors import EnrollmentError
from ..guards.audit import AUDIT_FILE, AuditLog
from ..guards.liveness_install import install
from ..pipeline.imageio import read_image
from ..recognizer import Recognizer
from ..service import Service, replay_camera
from ..settings import Settings, load_settings
from ..storage.files import secure_dir
from .bench_clips import write_clip

log = logging.getLogger(__name__)

ATTACK_FPS = 1.0  # NUAA kept about one capture every 2 s; 1 s apart lets several attempts fit a clip
LIVE_FPS = 10.0
ENROLL_FRAMES = 3


class CountingRelay:
    def __init__(self) -> None:
        self.unlocks = 0

    def unlock(self) -> None:
        self.unlocks += 1

    def lock(self) -> None:
        """Locking is the resting state: nothing to count."""


def nuaa_people(data: Path) -> dict[str, dict[str, list[Path]]]:
    """person -> {"live:<session>": frames, "print": frames}, each in capture order."""
    with open(data / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: (r["session"], int(Path(r["path"]).stem.split("_")[-1])))
    people: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        kind = "print" if row["label"] == "spoof_print" else f"live:{row['session']}"
        people[row["identity"]][kind].append(data / row["path"])
    return {p: dict(kinds) for p, kinds in people.items() if "print" in kinds and any(k.startswith("live") for k in kinds)}


def split_live(kinds: dict[str, list[Path]]) -> tuple[list[Path], list[Path], str]:
    """(enrollment frames, genuine visit frames, how they were split)."""
    sessions = sorted(k for k in kinds if k.startswith("live:"))
    if len(sessions) > 1:
        return kinds[sessions[0]], kinds[sessions[1]], f"enrolled {sessions[0]}, visit {sessions[1]}"
    frames = kinds[sessions[0]]
    half = len(frames) // 2
    return frames[:half], frames[half:], "one session: enrolled its first frames, visit its second half"


def usable_photos(recognizer: Recognizer, frames: list[Path]) -> list[tuple[str, object]]:
    """The first ENROLL_FRAMES frames that enroll on their own (some NUAA frames show a bystander)."""
    usable = []
    for path in frames:
        image = read_image(path)
        try:
            recognizer.enrollment_sample(image, str(path))
        except EnrollmentError:
            continue
        usable.append((str(path), image))
        if len(usable) == ENROLL_FRAMES:
            break
    return usable


def clip_of(frames: list[Path], target: Path, fps: float) -> Path:
    """The frames as a video file, written as the bench writes its clips (bench_clips.write_clip)."""
    images = [read_image(p) for p in frames]
    height, width = images[0].shape[:2]
    write_clip([cv2.resize(image, (width, height)) for image in images], target, fps, (width, height))
    return target


def replay(settings: Settings, clip: Path, fps: float) -> tuple[list[dict], int]:
    events: list[dict] = []
    relay = CountingRelay()
    service = Service(
        settings, cameras=[replay_camera(str(clip), "front", fps)], realtime=False,
        on_event=events.append, relay_factory=lambda door: relay,
    )  # fmt: skip
    service.bridge.start()
    try:
        service.bridge.mqtt.wait_connected(10)  # a decision before the connection would be denied
        service.start_cameras()
        service.wait(timeout=300)
    finally:
        service.stop()
    return events, relay.unlocks


def sweep_person(person: str, kinds: dict[str, list[Path]], liveness: Path, work: Path) -> dict:
    settings = load_settings(data_dir=work / person, liveness={"models": liveness}, lock={"relock_s": 1.0})
    enroll_frames, visit_frames, how = split_live(kinds)
    recognizer = Recognizer(
        secure_dir(settings.data_dir), settings.model, settings.quality, settings.match,
        audit=AuditLog(settings.data_dir / AUDIT_FILE, settings.audit),
    )  # fmt: skip
    recognizer.enroll(person, usable_photos(recognizer, enroll_frames))
    recognizer.close()
    result = {"split": how}
    # The genuine visit first: the attack's failed attempts would lock the door out for it.
    for kind, frames, fps in (("genuine", visit_frames, LIVE_FPS), ("print", kinds["print"], ATTACK_FPS)):
        events, unlocks = replay(settings, clip_of(frames, work / f"{person}-{kind}.mp4", fps), fps)
        result[kind] = {
            "frames": len(frames),
            "unlocks": unlocks,
            "decisions": [(e["event_type"], e.get("liveness"), e["reason"]) for e in events],
        }
    return result


def summarise(results: dict[str, dict]) -> dict:
    people = len(results)
    return {
        "people": people,
        "print_attacks_that_unlocked": sum(r["print"]["unlocks"] > 0 for r in results.values()),
        "genuine_visits_that_unlocked": sum(r["genuine"]["unlocks"] > 0 for r in results.values()),
        "print_decisions": sum(len(r["print"]["decisions"]) for r in results.values()),
        "genuine_decisions_denied": sum(
            sum(d[0] != "recognized" for d in r["genuine"]["decisions"]) for r in results.values()
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facelock_mqtt.tools.presentation_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, required=True, help="folder with the two MiniFASNet .pth files")
    parser.add_argument("--nuaa", type=Path, default=Path("../shared/data/nuaa"), help="the NUAA folder (labels.csv)")
    parser.add_argument("--json", type=Path, help="write the per-person results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="facelock-sweep-") as tmp:
        work = Path(tmp)
        liveness = install(args.weights, work / "liveness").parent
        results = {p: sweep_person(p, kinds, liveness, work) for p, kinds in sorted(nuaa_people(args.nuaa).items())}
    report = {"summary": summarise(results), "people": results}
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(json.dumps(report["summary"]))
    for person, r in results.items():
        print(f"{person}: print {r['print']['unlocks']} unlocks / {len(r['print']['decisions'])} decisions; "
              f"genuine {r['genuine']['unlocks']} unlocks ({r['split']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
