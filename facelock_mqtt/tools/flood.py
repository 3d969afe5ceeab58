"""Impostor flood: thousands of attempts by people who are not enrolled, at the default settings.

Real faces (LFW aligned crops) are embedded once by the default bundle's embedder and cached;
every attempt then runs the real decision path from those embeddings: `Matcher.match` per
frame, `decide.observe`, `Attempt` (k of n), and the `Lockout` on a simulated clock so attempts
can be spaced as an attacker at the door would space them. Every frame is treated as usable
(quality passed): the attacker's best case, since an unusable frame can never match.

An attempt is n frames of one non-enrolled identity: n different images when it has at least
n, otherwise its images drawn with repeats (a one-image identity shows one picture n times,
the strongest frame-to-frame correlation). Identities are used in a shuffled round robin.

Three runs over the same attempts:
- `no_lockout`: the recognizer and the k-of-n decision alone, every attempt evaluated;
- `paced`: one attempt every slot (n frames at the camera's fps plus the cooldown), the fastest
  a door takes attempts; attempts that fall in a lockout are refused, never evaluated;
- `patient`: the attacker waits out every lockout, so every attempt is evaluated; the simulated
  time it took says what the lockout costs an attacker.

`python -m facelock_mqtt.tools.flood --attempts 10000 --json OUT` (docs/SECURITY.md has the numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..guards.lockout import Lockout
from ..models.bundle import Bundle
from ..models.default_bundle import default_bundle
from ..pipeline.align import ARCFACE_TEMPLATE
from ..pipeline.decide import Attempt, Decision, observe
from ..pipeline.detect import Face
from ..pipeline.embed import Embedder
from ..pipeline.engine import FaceResult
from ..pipeline.imageio import read_image
from ..pipeline.match import Matcher, MatchResult
from ..pipeline.quality import Quality
from ..recognizer import Identification
from ..settings import DecisionSettings, LockoutSettings, MatchSettings
from .evaluate import image_files

log = logging.getLogger(__name__)

DOOR = "front"
FPS = 5.0  # the camera setting's default
DEFAULT_LFW = Path("../shared/data/lfw_aligned_112")
# An aligned 112x112 crop needs no detection: its landmarks are the template's.
_ALIGNED_FACE = Face(np.array([0, 0, 112, 112], np.float32), ARCFACE_TEMPLATE.astype(np.float32), 1.0)
_PASSED = Quality(size_px=88.0, blur=100.0, brightness=128.0, yaw=0.0)


@dataclass(frozen=True)
class Faces:
    """Embedded face images: parallel label, path and embedding rows."""

    labels: list[str]
    paths: list[str]
    embeddings: np.ndarray

    def rows(self) -> dict[str, list[int]]:
        grouped: dict[str, list[int]] = defaultdict(list)
        for row, label in enumerate(self.labels):
            grouped[label].append(row)
        return grouped


@dataclass(frozen=True)
class Plan:
    """Who is enrolled (rows used as templates) and the impostor attempts (rows shown)."""

    enrolled: dict[str, list[int]]
    attempts: list[tuple[str, list[int]]]  # (impostor identity, frame rows)
    impostor_identities: int
    repeated_frame_attempts: int  # attempts that had to show an image more than once


@dataclass
class Closest:
    score: float = -1.0
    identity: str | None = None
    image: str | None = None
    person: str | None = None
    margin: float | None = None


@dataclass
class RunReport:
    mode: str
    attempts: int = 0
    evaluated: int = 0
    refused_by_lockout: int = 0
    unlocks: int = 0
    denied: int = 0
    frames_matched: int = 0
    frames_above_threshold: int = 0  # above the threshold, accepted or stopped by the margin
    frames_accepted: int = 0  # above the threshold and clear of the runner-up
    attempts_with_an_accepted_frame: int = 0
    most_accepted_frames_in_one_attempt: int = 0
    lockouts: int = 0
    highest_lockout_level: int = 0
    locked_out_at_end: bool = False
    simulated_hours: float = 0.0
    closest: Closest = field(default_factory=Closest)
    seconds: float = 0.0


# --- faces ---------------------------------------------------------------------------------------


def embed_faces(files: list[tuple[str, Path]], bundle: Bundle, cache_dir: Path, threads: int) -> Faces:
    """Embed every file once per bundle and file list; later runs read the cache."""
    key = hashlib.sha256("\n".join(f"{label}/{p.name}" for label, p in files).encode()).hexdigest()[:16]
    model = bundle.manifest.fingerprint.split(":")[-1]
    cache = Path(cache_dir) / f"embeddings-{model}-{key}.npz"
    if cache.is_file():
        with np.load(cache) as data:
            return Faces(list(data["labels"]), list(data["paths"]), data["embeddings"])
    embedder, start, parts = Embedder(bundle, threads), time.perf_counter(), []
    for i in range(0, len(files), 64):
        parts.append(embedder.embed([read_image(path) for _, path in files[i : i + 64]]))
    faces = Faces([label for label, _ in files], [f"{label}/{p.name}" for label, p in files], np.concatenate(parts))
    log.info("embedded %d images in %.1f s", len(files), time.perf_counter() - start)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, labels=np.array(faces.labels), paths=np.array(faces.paths), embeddings=faces.embeddings)
    return faces


# --- the plan ------------------------------------------------------------------------------------


def plan(faces: Faces, n_attempts: int, n_enrolled: int, templates: int, frames: int, seed: int) -> Plan:
    """Enroll `n_enrolled` random identities with `templates` images each; build the attempts
    from every other identity, in a shuffled round robin."""
    rng = random.Random(seed)
    rows = faces.rows()
    candidates = sorted(label for label, r in rows.items() if len(r) >= templates)
    if len(candidates) < n_enrolled:
        raise ValueError(f"only {len(candidates)} identities have {templates} images; cannot enroll {n_enrolled}")
    enrolled = {label: rows[label][:templates] for label in rng.sample(candidates, n_enrolled)}
    impostors = sorted(label for label in rows if label not in enrolled)
    if not impostors:
        raise ValueError("no identity is left to be an impostor")
    rng.shuffle(impostors)
    attempts, repeated = [], 0
    for i in range(n_attempts):
        label = impostors[i % len(impostors)]
        pool = rows[label]
        if len(pool) >= frames:
            shown = rng.sample(pool, frames)
        else:
            shown, repeated = [rng.choice(pool) for _ in range(frames)], repeated + 1
        attempts.append((label, shown))
    return Plan(enrolled, attempts, len(impostors), repeated)


def matcher_for(faces: Faces, enrolled: dict[str, list[int]], bundle: Bundle, match: MatchSettings) -> Matcher:
    """The matcher `Recognizer.matcher` builds for this gallery: same templates, same threshold."""
    people = [label for label, rows in enrolled.items() for _ in rows]
    templates = faces.embeddings[[row for rows in enrolled.values() for row in rows]]
    return Matcher(templates, people, bundle.band_thresholds(match.target_far), match.target_far, match.min_margin)


# --- the runs ------------------------------------------------------------------------------------


def worst_images(faces: Faces, enrolled: dict[str, list[int]], matcher: Matcher, k: int) -> dict:
    """Frame-level bound: against each enrolled person, the k best impostor images from anyone.
    Even an attacker free to show any k of these photos in one attempt needs the k-th to pass."""
    rows = [r for r, label in enumerate(faces.labels) if label not in enrolled]
    scores = faces.embeddings[rows] @ matcher.templates.T
    threshold, report = matcher.threshold.threshold, {}
    for name in matcher.names:
        best = scores[:, matcher.people == name].max(axis=1)
        top = np.argsort(best)[::-1][:k]
        report[name] = {
            "images": [faces.paths[rows[i]] for i in top],
            "scores": [round(float(best[i]), 4) for i in top],
            "above_threshold": int((best > threshold).sum()),
        }
    return report


def run_attempt(
    matcher: Matcher, embeddings: np.ndarray, decision: DecisionSettings, start: float
) -> tuple[Decision, list[MatchResult]]:
    """One attempt through observe -> Attempt, frames at the camera's fps, as `Door` feeds them."""
    attempt = Attempt(decision, matcher.threshold.threshold, matcher.target_far)
    matches: list[MatchResult] = []
    times = start + np.arange(len(embeddings)) / FPS
    for t, embedding in zip(times, embeddings):
        match = matcher.match(embedding, _PASSED)
        matches.append(match)
        result = FaceResult(_ALIGNED_FACE, np.empty(0, np.uint8), _PASSED, embedding, 1)
        concluded = attempt.add(observe(Identification(result, match), float(t)))
        if concluded is not None:
            return concluded, matches
    concluded = attempt.close(float(times[-1]) + 1.0 / FPS)
    if concluded is None:
        raise RuntimeError("an attempt with frames must conclude")
    return concluded, matches


def _tally(
    report: RunReport, faces: Faces, identity: str, rows: list[int], matches: list[MatchResult], decision: Decision
) -> None:
    report.evaluated += 1
    report.frames_matched += len(matches)
    accepted = sum(m.accepted for m in matches)
    report.frames_accepted += accepted
    report.frames_above_threshold += sum(m.score > m.threshold for m in matches)
    report.attempts_with_an_accepted_frame += accepted > 0
    report.most_accepted_frames_in_one_attempt = max(report.most_accepted_frames_in_one_attempt, accepted)
    for row, m in zip(rows, matches):
        if m.score > report.closest.score:
            report.closest = Closest(m.score, identity, faces.paths[row], m.person, m.margin)
    if decision.outcome == "recognized":
        report.unlocks += 1
        log.error("impostor %s unlocked as %s: %s", identity, decision.person, decision.reason)
    else:
        report.denied += 1


def run(
    faces: Faces,
    the_plan: Plan,
    matcher: Matcher,
    decision: DecisionSettings,
    lockout_settings: LockoutSettings | None,
    state_dir: Path,
    patient: bool = False,
) -> RunReport:
    """Every attempt of the plan against one door; `lockout_settings=None` runs without lockout."""
    mode = "no_lockout" if lockout_settings is None else ("patient" if patient else "paced")
    report, started, clock = RunReport(mode), time.perf_counter(), [0.0]
    lockout = None
    if lockout_settings is not None:
        state = Path(state_dir) / f"lockout-{mode}.json"
        state.unlink(missing_ok=True)
        lockout = Lockout(lockout_settings, state, now=lambda: clock[0])
    slot = decision.n / FPS + decision.cooldown_s  # the fastest one door takes attempts
    ready = 0.0  # the door's cooldown after the previous decision
    for i, (identity, rows) in enumerate(the_plan.attempts):
        report.attempts += 1
        clock[0] = max(i * slot, ready)
        if lockout is not None:
            status = lockout.status(DOOR)
            if status.locked and not patient:
                report.refused_by_lockout += 1
                continue
            if status.locked:
                clock[0] = status.until + 1.0 / FPS  # wait it out, then come back
        concluded, matches = run_attempt(matcher, faces.embeddings[rows], decision, clock[0])
        _tally(report, faces, identity, rows, matches, concluded)
        clock[0], ready = concluded.ended, concluded.ended + decision.cooldown_s
        if lockout is not None:
            _record(lockout, report, concluded)
    report.simulated_hours = clock[0] / 3600.0
    report.locked_out_at_end = lockout is not None and lockout.status(DOOR).locked
    report.seconds = time.perf_counter() - started
    return report


def _record(lockout: Lockout, report: RunReport, concluded: Decision) -> None:
    """What `Door._conclude` does with the lockout after a decision."""
    if concluded.outcome == "recognized":
        lockout.record_success(DOOR)
    elif concluded.failed:
        event = lockout.record_failure(DOOR)
        if event is not None:
            report.lockouts += 1
            report.highest_lockout_level = max(report.highest_lockout_level, event.level)


# --- the whole flood -----------------------------------------------------------------------------


def flood(
    lfw: Path,
    work: Path,
    attempts: int,
    enrolled: int = 15,
    templates: int = 5,
    seed: int = 0,
    max_images: int | None = None,
    threads: int = 2,
    modes: tuple[str, ...] = ("no_lockout", "paced", "patient"),
) -> dict:
    """Embed, plan and run; a JSON-ready report. `max_images` caps the images embedded (CI)."""
    match, decision, lockout = MatchSettings(), DecisionSettings(), LockoutSettings()
    bundle = default_bundle(Path(work) / "data")
    files = image_files(lfw)
    if max_images is not None:
        files = _subset(files, max_images, templates, enrolled, seed)
    t0 = time.perf_counter()
    faces = embed_faces(files, bundle, Path(work) / "cache", threads)
    embed_s = time.perf_counter() - t0
    the_plan = plan(faces, attempts, enrolled, templates, decision.n, seed)
    matcher = matcher_for(faces, the_plan.enrolled, bundle, match)
    runs = {
        mode: run(
            faces, the_plan, matcher, decision, None if mode == "no_lockout" else lockout, Path(work), mode == "patient"
        )
        for mode in modes
    }
    return {
        "settings": {"match": match.model_dump(), "decision": decision.model_dump(), "lockout": lockout.model_dump()},
        "threshold": matcher.threshold.threshold,
        "threshold_far": matcher.threshold.far,
        "bundle": bundle.manifest.fingerprint,
        "images_embedded": len(faces.labels),
        "embed_seconds": round(embed_s, 1),
        "enrolled": {person: [faces.paths[r] for r in rows] for person, rows in the_plan.enrolled.items()},
        "impostor_identities": the_plan.impostor_identities,
        "impostor_images": sum(label not in the_plan.enrolled for label in faces.labels),
        "attempts": len(the_plan.attempts),
        "repeated_frame_attempts": the_plan.repeated_frame_attempts,
        "runs": {mode: asdict(report) for mode, report in runs.items()},
        "worst_images": worst_images(faces, the_plan.enrolled, matcher, decision.k),
    }


def _subset(
    files: list[tuple[str, Path]], max_images: int, templates: int, enrolled: int, seed: int
) -> list[tuple[str, Path]]:
    """A smaller but still varied set: identities in a seeded order until `max_images`, making
    sure `enrolled` of them have `templates` images."""
    grouped: dict[str, list[Path]] = defaultdict(list)
    for label, path in files:
        grouped[label].append(path)
    labels = sorted(grouped)
    random.Random(seed).shuffle(labels)
    big = [label for label in labels if len(grouped[label]) >= templates][:enrolled]
    chosen, count = [], 0
    for label in big + [label for label in labels if label not in big]:
        if count + len(grouped[label]) > max_images:
            continue
        chosen.append(label)
        count += len(grouped[label])
    keep = set(chosen)
    return [(label, path) for label, path in files if label in keep]


def summary(report: dict) -> str:
    lines = [
        (
            f"threshold {report['threshold']:.4f} (FAR {report['threshold_far']:g}); {len(report['enrolled'])} people "
            f"enrolled; {report['attempts']} attempts from {report['impostor_identities']} impostor identities "
            f"({report['impostor_images']} images; {report['repeated_frame_attempts']} attempts repeat an image)"
        )
    ]
    worst = report["worst_images"]
    kth = max(worst.values(), key=lambda w: w["scores"][-1])
    lines.append(
        f"best impostor image {max(w['scores'][0] for w in worst.values()):.4f}; best k-th image against one person "
        f"{kth['scores'][-1]:.4f} ({', '.join(kth['images'])}); impostor images above threshold "
        f"{sum(w['above_threshold'] for w in worst.values())}"
    )
    for mode, r in report["runs"].items():
        closest = r["closest"]
        lines.append(
            f"{mode:>10}: {r['unlocks']} unlocks; {r['evaluated']} evaluated, {r['refused_by_lockout']} refused by "
            f"lockout, {r['lockouts']} lockouts (level {r['highest_lockout_level']}), {r['simulated_hours']:.1f} h "
            f"simulated; frames accepted {r['frames_accepted']} / {r['frames_matched']}, above threshold "
            f"{r['frames_above_threshold']}; closest {closest['score']:.4f} ({closest['image']} vs {closest['person']}); "
            f"{r['seconds']:.1f} s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facelock_mqtt.tools.flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=10_000)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help="lfw_aligned_112 folder")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "facelock-flood",
                        help="data dir for the default bundle, the embedding cache and lockout state")  # fmt: skip
    parser.add_argument("--enrolled", type=int, default=15)
    parser.add_argument("--templates", type=int, default=5)
    parser.add_argument("--max-images", type=int, default=None, help="embed at most this many images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("facelock_mqtt.guards.lockout").setLevel(logging.ERROR)  # thousands of expected lockouts
    report = flood(
        args.lfw, args.work, args.attempts, args.enrolled, args.templates, args.seed, args.max_images, args.threads
    )
    print(summary(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    unlocked = any(r["unlocks"] for r in report["runs"].values())
    return 1 if unlocked else 0


if __name__ == "__main__":
    sys.exit(main())
