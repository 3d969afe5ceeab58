"""Measure the evidence-of-life cue: the noise floor of a still picture, live faces, prints.

    python -m training.liveness_life --models DIR [--write-calibration]

A still picture fed as a stream (one frame repeated with fresh noise, re-encoded as JPEG as a
camera or an MQTT snapshot would) must show no face motion; a live face must. This prints:

- the noise floor: `face_motion` over attempts made of one NUAA live frame repeated with fresh
  Gaussian noise (several sigmas, two JPEG qualities, the face at full, half and 0.3x size), the
  face re-detected on every copy as the door would;
- the sensitivity: the same still moved by a known sub-pixel shift, to show what the cue can see;
- live NUAA attempts (all 8 people, every session): windows of consecutive captures, with k and
  n frames as the door gives liveness (k when every frame matches, n at most), the distribution of
  `face_motion`, and the genuine rejection rate (BPCER) it costs, alone and with the CNN;
- NUAA print attempts: how many show face motion, and the fused outcome;
- the cost of the cue per attempt.

The threshold is chosen from the noise floor only (never from the live data it is reported on):
`LIFE_MARGIN` times the largest still-picture motion at sigma 1-3 (the stress sigma is reported,
not used). NUAA keeps about one capture every 2 s, so its "consecutive" frames are 2 s apart, 20
times a 10 fps camera's spacing: the live figures here overstate how much a face moves between
two door-camera frames (docs/LIVENESS.md says what that means).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from facelock_mqtt.guards import liveness
from facelock_mqtt.guards.liveness_motion import face_motion
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.settings import DecisionSettings, ModelSettings, QualitySettings

from .liveness_eval import calibration_path, read_sessions, score_session

log = logging.getLogger(__name__)

SIGMAS = (1.0, 2.0, 3.0)  # grey levels of fresh noise per copy: what the threshold is chosen on
STRESS_SIGMA = 8.0  # heavier noise than a camera gives: reported, not used to choose
JPEG_QUALITIES = (90, 75)
FACE_SCALES = (1.0, 0.5, 0.3)  # the NUAA frame scaled down: faces of about 150, 75 and 45 px
SHIFTS = (0.001, 0.002, 0.004)  # sensitivity probe, in face widths
LIFE_MARGIN = 2.5


def still_copy(image: np.ndarray, sigma: float, quality: int, rng: np.random.Generator) -> np.ndarray:
    """One copy of a still picture: fresh Gaussian noise, then JPEG, as a stream would carry it."""
    noisy = np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV cannot encode JPEG")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def detected(engine: FaceEngine, images: list[np.ndarray]) -> list[tuple[np.ndarray, object]] | None:
    """(image, best face) for each image, or None when a copy shows no face (the door would skip it)."""
    frames = []
    for image in images:
        faces = engine.faces(image)
        if not faces:
            return None
        frames.append((image, max(faces, key=frontal_rank)))
    return frames


def shifted(image: np.ndarray, dx: float) -> np.ndarray:
    move = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(image, move, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def still_attempts(
    engine: FaceEngine, sources: list[np.ndarray], frames: int, seed: int = 0
) -> dict[tuple[float, int, float], list[float]]:
    """face_motion of still-picture attempts, per condition (sigma, JPEG quality, face scale)."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[float, int, float], list[float]] = {}
    conditions = [(s, q, 1.0) for s in (*SIGMAS, STRESS_SIGMA) for q in JPEG_QUALITIES]
    conditions += [(2.0, 90, f) for f in FACE_SCALES[1:]]
    for sigma, quality, factor in conditions:
        values = []
        for source in sources:
            image = source
            if factor != 1.0:
                image = cv2.resize(source, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
            attempt = detected(engine, [still_copy(image, sigma, quality, rng) for _ in range(frames)])
            if attempt is not None:
                values.append(face_motion(attempt))
        out[(sigma, quality, factor)] = values
    return out


def shift_probe(engine: FaceEngine, sources: list[np.ndarray], seed: int = 1) -> dict[float, list[float]]:
    """face_motion of a still and a copy shifted by a known fraction of the face width (sigma 2)."""
    rng = np.random.default_rng(seed)
    out: dict[float, list[float]] = {s: [] for s in SHIFTS}
    for source in sources:
        faces = engine.faces(source)
        if not faces:
            continue
        width = float(max(faces, key=frontal_rank).box[2])
        for share in SHIFTS:
            pair = [still_copy(source, 2.0, 90, rng), still_copy(shifted(source, share * width), 2.0, 90, rng)]
            attempt = detected(engine, pair)
            if attempt is not None:
                out[share].append(face_motion(attempt))
    return out


def not_motion_probe(engine: FaceEngine, sources: list[np.ndarray], seed: int = 2) -> dict[str, list[float]]:
    """Changes that are not motion, each against the clean still (sigma 2 on both): an exposure
    step (x1.1, as auto-exposure makes; x1.3 + 10, which saturates bright skin) and a dark bar
    over a quarter of the face (a hand over the picture)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"exposure x1.1": [], "exposure x1.3 + 10": [], "hand over the face": []}
    for source in sources:
        faces = engine.faces(source)
        if not faces:
            continue
        x, y, w, h = (int(v) for v in max(faces, key=frontal_rank).box)
        covered = source.copy()
        covered[y + h // 2 : y + h, x : x + w // 4] = 40
        steps = {name: np.clip(source * gain + offset, 0, 255).astype(np.uint8)
                 for name, gain, offset in (("exposure x1.1", 1.1, 0), ("exposure x1.3 + 10", 1.3, 10))}
        for name, changed in (*steps.items(), ("hand over the face", covered)):
            attempt = detected(engine, [still_copy(source, 2.0, 90, rng), still_copy(changed, 2.0, 90, rng)])
            if attempt is not None:
                out[name].append(face_motion(attempt))
    return out


def session_frames(nuaa: Path, engine: FaceEngine, model: liveness.LivenessModel) -> list[tuple[dict, list]]:
    """Per NUAA session: its scored frames (CNN, split) and the (image, face) pairs, in capture order."""
    sessions = []
    for rows in read_sessions(nuaa):
        scored = score_session(nuaa, rows, engine, model)
        by_path = {f.path: f for f in scored}
        pairs = []
        for row in rows:
            if row["path"] in by_path:
                image = read_image(nuaa / row["path"])
                pairs.append((image, max(engine.faces(image), key=frontal_rank)))
        sessions.append(({"live": rows[0]["label"] == "live", "identity": rows[0]["identity"],
                          "cnn": [f.cnn for f in scored]}, pairs))
    return sessions


def windows(sessions: list[tuple[dict, list]], size: int, live: bool) -> list[tuple[str, float, float | None]]:
    """(identity, mean CNN score, face_motion) of every window of `size` consecutive frames."""
    out = []
    for info, pairs in sessions:
        if info["live"] != live:
            continue
        for start in range(len(pairs) - size + 1):
            cnn = float(np.mean(info["cnn"][start : start + size]))
            out.append((info["identity"], cnn, face_motion(pairs[start : start + size])))
    return out


def frames_to_evidence(sessions: list[tuple[dict, list]], threshold: float, longest: int) -> list[int | None]:
    """For every live window of `longest` frames: how many frames the door must take before the
    face shows evidence of life (2 when the first pair already does; None: never within `longest`)."""
    out = []
    for info, pairs in sessions:
        if not info["live"]:
            continue
        for start in range(len(pairs) - longest + 1):
            window = pairs[start : start + longest]
            needed = next((m for m in range(2, longest + 1) if (face_motion(window[:m]) or 0.0) >= threshold), None)
            out.append(needed)
    return out


def describe(values: list[float | None]) -> str:
    x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if not len(x):
        return "n=0"
    q = np.nanquantile(x, [0.0, 0.05, 0.5, 0.95, 1.0])
    return f"n={len(x):3d}  min {q[0]:.4f}  p5 {q[1]:.4f}  median {q[2]:.4f}  p95 {q[3]:.4f}  max {q[4]:.4f}"


def rejected(values: list[float | None], threshold: float) -> int:
    return sum(1 for v in values if v is None or not v >= threshold)


def timing(pairs: list, frames: int, repeats: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        face_motion(pairs[:frames])
    return 1000 * (time.perf_counter() - start) / repeats


def noise_floor(engine: FaceEngine, sources: list[np.ndarray], sizes: list[int], repeats: int) -> float:
    """Print the still-picture distributions; return the floor (largest value at sigma 1-3)."""
    floors = []
    for size in sizes:
        print(f"noise floor, still picture, attempts of {size} frames (face widths):")
        for (sigma, quality, factor), values in still_attempts(engine, sources * repeats, size).items():
            print(f"  sigma {sigma:g}, JPEG {quality}, face x{factor:<4g} {describe(values)}")
            if sigma != STRESS_SIGMA:
                floors.append(max(values))
    return max(floors)


def probes(engine: FaceEngine, sources: list[np.ndarray], threshold: float) -> None:
    """Print what the cue sees (known shifts) and what it must not (exposure, a hand)."""
    print("sensitivity, a still moved by a known shift (sigma 2, JPEG 90), 2 frames:")
    found = {f"shift {share:.3f} face widths": v for share, v in shift_probe(engine, sources).items()}
    found.update({f"{name} (not motion)": v for name, v in not_motion_probe(engine, sources).items()})
    for name, values in found.items():
        print(f"  {name}: {describe(values)}; seen {len(values) - rejected(values, threshold)}/{len(values)}")


def live_and_prints(sessions: list, size: int, threshold: float, cnn_threshold: float) -> dict[str, float]:
    """Print live NUAA attempts' motion and rejections (per person) and the prints' outcome."""
    live = windows(sessions, size, live=True)
    motions = [m for _, _, m in live]
    cnn_ok = [c >= cnn_threshold for _, c, _ in live]
    life_ok = [m is not None and m >= threshold for m in motions]
    both = sum(a and b for a, b in zip(cnn_ok, life_ok))
    people = sorted({p for p, _, _ in live})
    total = len(live)
    print(f"\nlive NUAA attempts of {size} consecutive frames ({len(people)} people, {total} attempts):")
    print(f"  face motion: {describe(motions)}")
    print(f"  BPCER, life cue alone: {total - sum(life_ok)}/{total}; CNN alone: {total - sum(cnn_ok)}/{total}; "
          f"CNN and life: {total - both}/{total}")
    for person in people:
        mine = [m for p, _, m in live if p == person]
        print(f"    {person}: {rejected(mine, threshold)}/{len(mine)} without evidence of life, "
              f"min motion {min(mine):.4f}")
    attacks = windows(sessions, size, live=False)
    moved = [m is not None and m >= threshold for _, _, m in attacks]
    passed = [c >= cnn_threshold and ok for (_, c, _), ok in zip(attacks, moved)]
    print(f"  NUAA print attempts: {sum(moved)}/{len(attacks)} show face motion (held by hand); "
          f"accepted by CNN and life: {sum(passed)}/{len(attacks)}")
    return {
        f"life_live_bpcer_{size}_frames": (total - sum(life_ok)) / total,
        f"life_live_min_{size}_frames": float(min(m for m in motions if m is not None)),
    }


def latency(sessions: list, threshold: float, decision: DecisionSettings) -> float:
    """Print how many frames live attempts need before showing life, and the cue's cost; return
    the share of live attempts that never show it within LIFE_MAX_FRAMES."""
    longest = liveness.LIFE_MAX_FRAMES
    needed = frames_to_evidence(sessions, threshold, longest)
    counts = {m: needed.count(m) for m in (*range(2, longest + 1), None)}
    shown = ", ".join(f"{'never' if m is None else m}: {c}" for m, c in counts.items())
    print(f"\nframes a live NUAA attempt needs before the face shows life (door waits up to {longest}): "
          f"{shown} of {len(needed)}")
    some = sessions[0][1]
    print(f"\ncost of face_motion: {timing(some, decision.k):.1f} ms for {decision.k} frames, "
          f"{timing(some, decision.n):.1f} ms for {decision.n} (this machine, 1 thread of OpenCV's choosing)")
    return counts[None] / len(needed)


def report(args: argparse.Namespace, engine: FaceEngine, model: liveness.LivenessModel) -> dict[str, float]:
    decision = DecisionSettings()
    sizes = sorted({decision.k, decision.n})
    sessions = session_frames(args.nuaa, engine, model)
    sources = [pairs[0][0] for info, pairs in sessions if info["live"]]  # one still per live session
    print(f"NUAA: {sum(i['live'] for i, _ in sessions)} live and {sum(not i['live'] for i, _ in sessions)} print "
          f"sessions; stills from the first frame of each live session ({len(sources)})\n")
    floor = noise_floor(engine, sources, sizes, args.repeats)
    threshold = LIFE_MARGIN * floor
    print(f"\nnoise floor (sigma <= {SIGMAS[-1]:g}, every size) {floor:.4f}; "
          f"threshold = {LIFE_MARGIN:g} x floor = {threshold:.4f}\n")
    probes(engine, sources, threshold)
    measured = {"life_noise_floor": floor, "life_threshold": threshold}
    for size in sizes:
        measured.update(live_and_prints(sessions, size, threshold, model.point.threshold))
    measured["life_live_never_within_max_frames"] = latency(sessions, threshold, decision)
    return measured


def provenance() -> str:
    """How min_life_motion was measured, for the shipped operating point's `life_chosen_on`."""
    sigmas = ", ".join(f"{s:g}" for s in SIGMAS)
    qualities = ", ".join(map(str, JPEG_QUALITIES))
    scales = ", x".join(f"{f:g}" for f in FACE_SCALES)
    return (f"{LIFE_MARGIN:g} x the largest face_motion of a still NUAA live frame repeated with fresh noise "
            f"(sigma {sigmas}; JPEG {qualities}; faces x{scales}), python -m training.liveness_life")


def write_calibration(measured: dict[str, float]) -> None:
    """Store the threshold and its measurements in the shipped point, keeping everything else."""
    point = liveness.load_operating_point()
    kept = {k: v for k, v in point.measured.items() if not k.startswith("life_")}
    life = {k: v for k, v in measured.items() if k != "life_threshold"}
    updated = point.model_copy(update={
        "min_life_motion": measured["life_threshold"], "life_chosen_on": provenance(), "measured": {**kept, **life},
    })
    calibration_path().write_text(updated.model_dump_json(indent=2) + "\n")
    print(f"wrote {calibration_path()}")


def main(argv: list[str] | None = None) -> int:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(prog="python -m training.liveness_life", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder of the exported liveness models")
    parser.add_argument("--nuaa", type=Path, default=shared / "nuaa", help="NUAA folder with labels.csv")
    parser.add_argument("--repeats", type=int, default=4, help="still attempts per live session and condition")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the default bundle is cached")
    parser.add_argument(
        "--write-calibration", action="store_true", help="store the threshold in the shipped operating point"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = default_bundle(args.data_dir or Path(tmp))
        engine = FaceEngine(bundle, ModelSettings(threads=args.threads), QualitySettings())
        point = liveness.load_operating_point()
        model = liveness.LivenessModel.from_dir(args.models, args.threads, point=point)
        measured = report(args, engine, model)
    if args.write_calibration:
        write_calibration(measured)
    return 0


if __name__ == "__main__":
    sys.exit(main())
