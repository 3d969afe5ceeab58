"""Choose the liveness operating point on NUAA's training split and report it on the test split.

    python -m training.liveness_eval --models DIR [--frames 5] [--write-calibration]

Faces come from the core detector (the default YuNet bundle, the face `FaceEngine` would pick).
Consecutive captures of one NUAA session behave like a short video, so an *attempt* is a window
of `--frames` consecutive frames of one session (stride 1). On the training split, a grid over
the temporal cue's parameters and weight is searched; for each, the threshold is the highest
that keeps BPCER <= 5 % on training attempts; the winner has the lowest worst-attack-type APCER,
then the lowest BPCER, then the lowest *stress* APCER, then the widest gap between the threshold
and the best-scoring spoof. The stress test gives every attack attempt the median bona fide CNN
score, as a print that fools the CNN would get (NUAA's bordered prints never do): what stops it
then is the temporal cue alone. The test split is used only for the report. ISO/IEC 30107-3 terms: APCER = attacks accepted
(per attack type; the worst type is the headline), BPCER = bona fide presentations rejected.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from facelock_mqtt import models as models_package
from facelock_mqtt.guards import liveness
from facelock_mqtt.guards.liveness_motion import pair_evidence, temporal_from_pairs
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.settings import ModelSettings, QualitySettings

log = logging.getLogger(__name__)

TARGET_BPCER = 0.05
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_MOTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)
RIGID_QUANTILES = (0.8, 0.9, 0.95, 0.99)  # of the surround lift of bona fide training pairs
# NUAA codes the way an attack photo was handled in the position/light field of its file name.
STILL, MOVED = "print held still", "print moved or bent"


@dataclass(frozen=True)
class Frame:
    path: str
    live: bool
    split: str
    sequence: tuple[str, ...]
    index: int
    code: str
    cnn: float  # mean of both models' live probability
    pair: tuple[float, float | None] | None  # (motion, surround lift) from the session's previous frame


@dataclass(frozen=True)
class Attempt:
    live: bool
    split: str
    kind: str  # "bona fide" or an attack type
    cnn: float
    pairs: tuple[tuple[float, float | None], ...]


def provisional_point() -> liveness.OperatingPoint:
    """A point that only identifies the weights, so the models load before one is chosen."""
    return liveness.OperatingPoint(
        threshold=0.5, temporal_weight=0.0, rigid_lift=1.0, min_motion=1.0, min_life_motion=1.0,
        chosen_on="provisional", life_chosen_on="provisional",
        weights_sha256={s.name: s.weights_sha256 for s in liveness.MODELS},
    )


def read_sessions(nuaa: Path) -> list[list[dict[str, str]]]:
    """NUAA rows grouped by session (label, identity, session, glasses), in capture order."""
    sessions: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    with open(nuaa / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            sessions[(row["label"], row["identity"], row["session"], row["glasses_flag"])].append(row)
    return [sorted(rows, key=lambda r: int(Path(r["path"]).stem.rsplit("_", 1)[1])) for rows in sessions.values()]


def score_session(nuaa: Path, rows: list[dict[str, str]], engine: FaceEngine, model: liveness.LivenessModel) -> list[Frame]:
    frames, previous = [], None
    for row in rows:
        image = read_image(nuaa / row["path"])
        faces = engine.faces(image)
        if not faces:
            log.warning("no face in %s: skipped", row["path"])
            continue
        current = (image, max(faces, key=frontal_rank))
        frames.append(
            Frame(
                path=row["path"], live=row["label"] == "live", split=row["nuaa_split"],
                sequence=(row["label"], row["identity"], row["session"], row["glasses_flag"]),
                index=int(Path(row["path"]).stem.rsplit("_", 1)[1]), code=row["pos_light"],
                cnn=model.cnn_score(image, current[1].box),
                pair=pair_evidence(previous, current) if previous else None,
            )
        )
        previous = current
    return frames


def score_frames(nuaa: Path, engine: FaceEngine, model: liveness.LivenessModel) -> list[Frame]:
    return [frame for rows in read_sessions(nuaa) for frame in score_session(nuaa, rows, engine, model)]


def attempt_kind(frames: list[Frame]) -> str:
    if frames[0].live:
        return "bona fide"
    return STILL if all(f.code == "00" for f in frames) else MOVED


def make_attempts(frames: list[Frame], n: int) -> list[Attempt]:
    """Windows of `n` consecutive frames of one session (a session lies in one split)."""
    sequences: dict[tuple[str, ...], list[Frame]] = defaultdict(list)
    for frame in frames:
        sequences[frame.sequence].append(frame)
    attempts = []
    for seq in sequences.values():
        seq.sort(key=lambda f: f.index)
        if len({f.split for f in seq}) != 1:
            raise ValueError(f"session {seq[0].sequence} spans both splits")
        for start in range(len(seq) - n + 1):
            window = seq[start : start + n]
            attempts.append(
                Attempt(window[0].live, window[0].split, attempt_kind(window),
                        float(np.mean([f.cnn for f in window])), tuple(f.pair for f in window[1:] if f.pair))
            )
    return attempts


def fused_scores(attempts: list[Attempt], point: liveness.OperatingPoint, cnn: float | None = None) -> np.ndarray:
    """Fused scores; with `cnn`, every attempt's CNN score replaced by it (the stress test)."""
    return np.array([
        liveness.fuse(a.cnn if cnn is None else cnn, temporal_from_pairs(a.pairs, point.min_motion, point.rigid_lift), point)
        for a in attempts
    ])


def threshold_at_bpcer(live_scores: np.ndarray, target: float) -> float:
    """The highest threshold that rejects at most `target` of the bona fide scores."""
    ordered = np.sort(live_scores)
    return float(ordered[int(np.floor(target * len(ordered)))])


def rates(kinds: list[str], live: np.ndarray, accepted: np.ndarray) -> dict[str, tuple[int, int]]:
    """(errors, count) per kind: rejected bona fide, accepted attacks of each type."""
    out: dict[str, tuple[int, int]] = {}
    for kind in sorted(set(kinds)):
        mask = np.array([k == kind for k in kinds])
        errors = int((~accepted[mask]).sum()) if live[mask][0] else int(accepted[mask].sum())
        out[kind] = (errors, int(mask.sum()))
    return out


def summary(per_kind: dict[str, tuple[int, int]]) -> tuple[float, float]:
    """(worst-type APCER, BPCER)."""
    apcer = max(e / n for k, (e, n) in per_kind.items() if k != "bona fide")
    e, n = per_kind["bona fide"]
    return apcer, e / n


def stress_cnn(train: list[Attempt]) -> float:
    """The median bona fide CNN score: what a print that fools the CNN would score."""
    return float(np.median([a.cnn for a in train if a.live]))


def choose_point(train: list[Attempt], lifts: list[float]) -> tuple[liveness.OperatingPoint, dict[str, float]]:
    """Grid search on training attempts; see the module docstring for the order of criteria."""
    live = np.array([a.live for a in train])
    kinds = [a.kind for a in train]
    fooled = stress_cnn(train)
    candidates = []
    for weight, motion, lift in itertools.product(WEIGHTS, MIN_MOTIONS, lifts):
        point = provisional_point().model_copy(update={"temporal_weight": weight, "min_motion": motion, "rigid_lift": lift})
        scores = fused_scores(train, point)
        threshold = threshold_at_bpcer(scores[live], TARGET_BPCER)
        apcer, bpcer = summary(rates(kinds, live, scores >= threshold))
        stressed = float(np.mean(fused_scores([a for a in train if not a.live], point, fooled) >= threshold))
        gap = threshold - float(scores[~live].max())
        candidates.append(((apcer, bpcer, stressed, -gap), point.model_copy(update={"threshold": threshold})))
    (apcer, bpcer, stressed, gap), best = min(candidates, key=lambda c: c[0])
    return best, {"train_apcer": apcer, "train_bpcer": bpcer, "train_stress_apcer": stressed, "train_gap": -gap}


def evaluate(attempts: list[Attempt], point: liveness.OperatingPoint) -> dict[str, tuple[int, int]]:
    scores = fused_scores(attempts, point)
    return rates([a.kind for a in attempts], np.array([a.live for a in attempts]), scores >= point.threshold)


def frame_rates(frames: list[Frame], split: str, threshold: float) -> dict[str, tuple[int, int]]:
    """Per-frame, CNN only: per NUAA handling code for attacks."""
    chosen = [f for f in frames if f.split == split]
    kinds = ["bona fide" if f.live else f"print, code {f.code}" for f in chosen]
    return rates(kinds, np.array([f.live for f in chosen]), np.array([f.cnn >= threshold for f in chosen]))


def bona_fide_lifts(frames: list[Frame], split: str) -> list[float]:
    """Surround lifts of bona fide frame pairs: what a live face scores against its background."""
    return [f.pair[1] for f in frames if f.split == split and f.live and f.pair and f.pair[1] is not None]


def table(title: str, per_kind: dict[str, tuple[int, int]]) -> str:
    lines = [f"| {title} | errors / attempts | rate |", "|---|---|---|"]
    for kind, (errors, count) in per_kind.items():
        metric = "BPCER" if kind == "bona fide" else "APCER"
        bound = f" (95 % upper bound ≈ {3 / count:.1%})" if errors == 0 else ""
        lines.append(f"| {metric}: {kind} | {errors} / {count} | {errors / count:.1%}{bound} |")
    return "\n".join(lines)


def pad_smoke(pad: Path, engine: FaceEngine, model: liveness.LivenessModel) -> list[str]:
    lines = []
    for path in sorted(pad.rglob("*.jpg")):
        image = read_image(path)  # applies the EXIF orientation the samples are stored with
        faces = engine.faces(image)
        if not faces:
            lines.append(f"{path.parent.name}/{path.name}: no face")
            continue
        face = max(faces, key=frontal_rank)
        score = model.cnn_score(image, face.box)  # one frame shows no motion: the CNN alone is judged
        lines.append(f"{path.parent.name}/{path.name}: CNN {score:.3f} -> {'live' if score >= model.point.threshold else 'spoof'}")
    return lines


def calibration_path() -> Path:
    return Path(str(resources.files(models_package).joinpath(liveness.CALIBRATION_FILE)))


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        engine = FaceEngine(default_bundle(args.data_dir or Path(tmp)), ModelSettings(threads=args.threads), QualitySettings())
        model = liveness.LivenessModel.from_dir(args.models, args.threads, point=provisional_point())
        frames = score_frames(args.nuaa, engine, model)
        attempts = make_attempts(frames, args.frames)
        train = [a for a in attempts if a.split == "train"]
        test = [a for a in attempts if a.split == "test"]
        quantiles = np.quantile(bona_fide_lifts(frames, "train"), RIGID_QUANTILES).tolist()
        point, measured = choose_point(train, quantiles)
        cnn_only = point.model_copy(update={"temporal_weight": 0.0})
        fooled = stress_cnn(train)
        stress = {
            name: float(np.mean(fused_scores([a for a in group if not a.live], point, fooled) >= point.threshold))
            for name, group in (("train", train), ("test", test))
        }
        results = {
            f"train attempts ({args.frames} frames), fused": evaluate(train, point),
            f"test attempts ({args.frames} frames), fused": evaluate(test, point),
            f"test attempts ({args.frames} frames), CNN only": evaluate(test, cnn_only),
            "test single frames, CNN only": frame_rates(frames, "test", point.threshold),
            "train single frames, CNN only": frame_rates(frames, "train", point.threshold),
        }
        apcer, bpcer = summary(results[f"test attempts ({args.frames} frames), fused"])
        point = point.model_copy(
            update={
                "chosen_on": f"NUAA train split, {len(train)} attempts of {args.frames} frames, BPCER <= {TARGET_BPCER:.0%}",
                "measured": {**measured, "test_apcer": apcer, "test_bpcer": bpcer, "test_stress_apcer": stress["test"]},
            }
        )
        print(f"operating point: {point.model_dump_json(indent=2)}\n")
        print(f"stress APCER (attacks given the median bona fide CNN score {fooled:.3f}): "
              f"train {stress['train']:.1%}, test {stress['test']:.1%}\n")
        for title, per_kind in results.items():
            print(table(title, per_kind) + "\n")
        if args.pad:
            print("pad_samples (single frame):\n" + "\n".join(pad_smoke(args.pad, engine, model)))
    if args.write_calibration:
        shipped = liveness.load_operating_point()  # keeps what training/liveness_life.py chose
        life = {k: v for k, v in shipped.measured.items() if k.startswith("life_")}
        point = point.model_copy(update={
            "min_life_motion": shipped.min_life_motion, "life_chosen_on": shipped.life_chosen_on,
            "measured": {**point.measured, **life},
        })
        calibration_path().write_text(point.model_dump_json(indent=2) + "\n")
        print(f"wrote {calibration_path()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(prog="python -m training.liveness_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder of the exported liveness models")
    parser.add_argument("--nuaa", type=Path, default=shared / "nuaa", help="NUAA folder with labels.csv")
    parser.add_argument("--pad", type=Path, default=shared / "pad_samples", help="pad_samples folder (smoke test)")
    parser.add_argument("--frames", type=int, default=5, help="frames per attempt")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the default bundle is cached")
    parser.add_argument("--write-calibration", action="store_true", help=f"store the point in facelock_mqtt/{liveness.CALIBRATION_FILE}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
