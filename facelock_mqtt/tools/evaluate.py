"""Accuracy evaluation and calibration on face folders.

`eval lfw`: the standard 10-fold protocol on aligned crops, plus TAR at FAR over all genuine
and all cross-identity pairs; on a bundle trained by `training/` (it holds
trained_identities.json), every pair with a person it trained on is left out. `eval folder`:
the same all-pairs table on unaligned photos through detection + alignment + embedding, with
per-condition slices.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FaceLockError
from ..models.bundle import Bundle, Calibration, Threshold
from ..models.metrics import FARS, all_pairs_scores, far_key, lfw_10fold, supports, tar_at_far
from ..pipeline.engine import FaceEngine
from ..pipeline.imageio import read_image

log = logging.getLogger(__name__)

# Written into a trained bundle by training/export.py: {source: [identity folder name, ...]}.
TRAINED_IDENTITIES = "trained_identities.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".pgm", ".webp"}
# Capture conditions that file names carry (Yale's lighting and expression tags and the like).
CONDITIONS = (
    "centerlight", "leftlight", "rightlight", "glasses", "noglasses", "happy", "normal",
    "sad", "sleepy", "surprised", "wink", "night", "ir", "backlight", "dark",
)  # fmt: skip


@dataclass
class Embedded:
    paths: list[Path]
    labels: list[str]
    embeddings: np.ndarray
    seconds: float


def labelled(root: Path) -> set[str] | None:
    """Names listed in `<root>/labels.csv` (first column), when the folder has one."""
    labels = root / "labels.csv"
    if not labels.is_file():
        return None
    with open(labels, newline="") as fh:
        return {row[0] for row in list(csv.reader(fh))[1:] if row}


def image_files(root: Path) -> list[tuple[str, Path]]:
    """(identity, path) for every image in `<identity>/<image>` folders, sorted.

    When a `labels.csv` lists the files (by name or by path under the folder), unlisted ones,
    such as unlabelled scene photos, are left out.
    """
    if not root.is_dir():
        raise FaceLockError(f"{root} is not a folder")
    listed = labelled(root)
    files = [
        (folder.name, file)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for file in sorted(folder.iterdir())
        if file.suffix.lower() in IMAGE_SUFFIXES
        and (listed is None or file.name in listed or str(file.relative_to(root)) in listed)
    ]
    if not files:
        raise FaceLockError(f"{root} holds no <identity>/<image> files")
    return files


def embed_aligned(engine: FaceEngine, files: list[tuple[str, Path]], batch: int = 64) -> Embedded:
    start, vectors = time.perf_counter(), []
    for i in range(0, len(files), batch):
        vectors.append(engine.embed_aligned([read_image(path) for _, path in files[i : i + batch]]))
    return Embedded([p for _, p in files], [n for n, _ in files], np.concatenate(vectors), time.perf_counter() - start)


def embed_unaligned(engine: FaceEngine, files: list[tuple[str, Path]]) -> tuple[Embedded, list[Path]]:
    """Detect, align and embed each photo; photos with no face are returned separately."""
    start, kept, vectors, no_face = time.perf_counter(), [], [], []
    for label, path in files:
        result = engine.analyze(read_image(path), embed_poor=True)
        if result is None:
            no_face.append(path)
            continue
        kept.append((label, path))
        vectors.append(result.embedding)
    if len(kept) < 2:
        raise FaceLockError("fewer than two faces found: nothing to compare")
    embedded = Embedded([p for _, p in kept], [n for n, _ in kept], np.stack(vectors), time.perf_counter() - start)
    return embedded, no_face


def read_pairs(pairs_file: Path, root: Path) -> tuple[list[tuple[Path, Path]], np.ndarray, np.ndarray]:
    """LFW pairs.txt: header `folds n`, then `name i j` (same) or `name1 i name2 j` (different)."""
    lines = pairs_file.read_text().split("\n")
    try:
        folds, per_fold = (int(x) for x in lines[0].split())
    except ValueError as exc:
        raise FaceLockError(f"{pairs_file}: first line must be '<folds> <pairs per fold>'") from exc

    def image(name: str, number: str) -> Path:
        return root / name / f"{name}_{int(number):04d}.jpg"

    pairs, same = [], []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) == 3:
            pairs.append((image(parts[0], parts[1]), image(parts[0], parts[2])))
            same.append(True)
        elif len(parts) == 4:
            pairs.append((image(parts[0], parts[1]), image(parts[2], parts[3])))
            same.append(False)
    if len(pairs) != folds * 2 * per_fold:
        raise FaceLockError(f"{pairs_file}: expected {folds * 2 * per_fold} pairs, found {len(pairs)}")
    fold_ids = np.repeat(np.arange(folds), 2 * per_fold)
    return pairs, np.array(same), fold_ids


def pair_scores(embedded: Embedded, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor scores of every pair; a folder that yields none of one kind is refused
    (a TAR needs same-person pairs, a FAR needs pairs of different people)."""
    genuine, impostor = all_pairs_scores(embedded.embeddings, embedded.labels)
    people = len(set(embedded.labels))
    if not len(impostor):
        raise FaceLockError(f"{data}: faces of only {people} identity found; needs <identity>/<image> folders of 2 or more")
    if not len(genuine):
        raise FaceLockError(f"{data}: no identity has two images with a face; needs 2 or more per identity")
    return genuine, impostor


def tar_table(genuine: np.ndarray, impostor: np.ndarray) -> dict:
    table = tar_at_far(genuine, impostor, FARS)
    return {
        "tar_at_far": {k: v["tar"] for k, v in table.items()},
        "threshold_at_far": {k: v["threshold"] for k, v in table.items()},
        "far_supported": {k: v["supported"] for k, v in table.items()},
        "n_genuine": int(len(genuine)),
        "n_impostor": int(len(impostor)),
    }


def trained_people(bundle: Bundle) -> set[str] | None:
    """The identity folder names a trained bundle saw in training, over all its sources (a name
    of another source that LFW also uses is left out too: fewer pairs, never a flattering one);
    None for a bundle that has no TRAINED_IDENTITIES file (the default, a pack)."""
    path = bundle.path / TRAINED_IDENTITIES
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FaceLockError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(names, list) and all(isinstance(n, str) for n in names) for names in data.values()
    ):
        raise FaceLockError(f"{path}: expected {{source: [identity, ...]}}")
    return {name for names in data.values() for name in names}


def leave_out_trained(files: list[tuple[str, Path]], pairs: list[tuple[Path, Path]], same: np.ndarray,
                      folds: np.ndarray, trained: set[str]) -> tuple[list, list, np.ndarray, np.ndarray, dict]:  # fmt: skip
    """Images and pairs without the trained people, and what was left out."""
    keep = np.array([a.parent.name not in trained and b.parent.name not in trained for a, b in pairs], bool)
    kept_files = [(name, path) for name, path in files if name not in trained]
    all_folds, kept_folds = np.unique(folds), np.unique(folds[keep])
    report = {
        "file": TRAINED_IDENTITIES,
        "people": len(trained),
        "people_in_data": len({name for name, _ in files} & trained),
        "pairs_left_out": int(np.sum(~keep)),
        "images_left_out": len(files) - len(kept_files),
        "folds_left_out": [int(f) for f in np.setdiff1d(all_folds, kept_folds)],
    }
    return kept_files, [p for p, k in zip(pairs, keep, strict=True) if k], same[keep], folds[keep], report


def eval_lfw(engine: FaceEngine, data: Path, pairs_file: Path) -> dict:
    files = image_files(data)
    pairs, same, folds = read_pairs(pairs_file, data)
    trained = trained_people(engine.bundle)
    left_out = None
    if trained is not None:
        files, pairs, same, folds, left_out = leave_out_trained(files, pairs, same, folds, trained)
        n_folds = len(np.unique(folds))
        if n_folds < 2:
            raise FaceLockError(
                f"{left_out['pairs_left_out']} pairs of {pairs_file.name} are of people this bundle trained on "
                f"({TRAINED_IDENTITIES}); {n_folds} fold(s) remain: cross-validation needs 2 or more"
            )  # fmt: skip
    embedded = embed_aligned(engine, files)
    index = {path: i for i, path in enumerate(embedded.paths)}
    missing = [str(a if a not in index else b) for a, b in pairs if a not in index or b not in index]
    if missing:
        raise FaceLockError(f"{len(missing)} images of {pairs_file.name} are missing, e.g. {missing[0]}")
    e = embedded.embeddings
    scores = np.array([float(e[index[a]] @ e[index[b]]) for a, b in pairs])
    accuracy, std = lfw_10fold(scores, same, folds)
    genuine, impostor = pair_scores(embedded, data)
    return {
        "dataset": str(data),
        "bundle": engine.bundle.manifest.fingerprint,
        "accuracy": accuracy,
        "accuracy_std": std,
        "n_pairs": len(pairs),
        "n_folds": int(len(np.unique(folds))),
        "trained_identities": left_out,
        **tar_table(genuine, impostor),
        "n_images": len(embedded.paths),
        "ms_per_face": 1000 * embedded.seconds / len(embedded.paths),
    }


def condition_of(path: Path) -> str | None:
    tokens = set(re.split(r"[^a-z]+", path.stem.lower()))
    found = [c for c in CONDITIONS if c in tokens]
    return found[0] if found else None


def _slice(bundle: Bundle, embedded: Embedded, members: np.ndarray) -> dict:
    """Scores of pairs with at least one image in the slice, at the bundle's calibrated thresholds."""
    e, labels = embedded.embeddings, np.asarray(embedded.labels)
    scores = e[members] @ e.T
    rows, cols = np.nonzero(np.ones_like(scores, dtype=bool))
    member_idx = np.flatnonzero(members)[rows]
    # Each unordered pair once: drop self-pairs and the mirror of member-member pairs.
    keep = (member_idx != cols) & ~(members[cols] & (cols < member_idx))
    flat = scores[rows[keep], cols[keep]]
    same = labels[member_idx[keep]] == labels[cols[keep]]
    genuine, impostor = flat[same], flat[~same]
    out = {"n_images": int(members.sum()), "n_genuine": int(len(genuine)), "n_impostor": int(len(impostor))}
    if bundle.manifest.calibration is not None:
        out["at_calibrated"] = {
            far_key(t.far): {
                "threshold": t.threshold,
                "tar": float(np.mean(genuine > t.threshold)) if len(genuine) else None,
                "far": float(np.mean(impostor > t.threshold)) if len(impostor) else None,
            }
            for t in bundle.manifest.calibration.thresholds
        }
    return out


def eval_folder(engine: FaceEngine, data: Path) -> dict:
    files = image_files(data)
    embedded, no_face = embed_unaligned(engine, files)
    genuine, impostor = pair_scores(embedded, data)
    conditions = np.array([condition_of(p) or "" for p in embedded.paths])
    slices = {"all": _slice(engine.bundle, embedded, np.ones(len(conditions), bool))}
    for condition in sorted(set(conditions) - {""}):
        slices[condition] = _slice(engine.bundle, embedded, conditions == condition)
    return {
        "dataset": str(data),
        "bundle": engine.bundle.manifest.fingerprint,
        **tar_table(genuine, impostor),
        "n_images": len(files),
        "n_no_face": len(no_face),
        "no_face": [str(p) for p in no_face],
        "slices": slices,
        "worst_slice": worst_slice(slices),
        "ms_per_image": 1000 * embedded.seconds / len(files),
    }


def worst_slice(slices: dict) -> str | None:
    """The condition with the lowest TAR at the strictest calibrated FAR it can measure."""
    scored = []
    for name, data in slices.items():
        calibrated = data.get("at_calibrated") or {}
        tars = [v["tar"] for v in calibrated.values() if v["tar"] is not None]
        if name != "all" and tars:
            scored.append((min(tars), name))
    return min(scored)[1] if scored else None


def calibrate(engine: FaceEngine, data: Path, aligned: bool, model_card: str | None = None) -> Calibration:
    """Thresholds for each FAR the impostor count supports (rule of three)."""
    files = image_files(data)
    embedded = embed_aligned(engine, files) if aligned else embed_unaligned(engine, files)[0]
    genuine, impostor = pair_scores(embedded, data)
    table = tar_at_far(genuine, impostor, FARS)
    thresholds = tuple(
        # float32 cosines of (near-)identical vectors can exceed 1 by a rounding step
        Threshold(far=v["far"], threshold=min(v["threshold"], 1.0), n_impostor=len(impostor), tar=v["tar"])
        for v in table.values()
        if supports(len(impostor), v["far"])
    )
    if not thresholds:
        raise FaceLockError(f"{data}: {len(impostor)} impostor comparisons support no FAR down to {FARS[0]:g}")
    return Calibration(
        dataset=data.name,
        n_genuine=len(genuine),
        n_impostor=len(impostor),
        thresholds=thresholds,
        model_card=model_card,
    )
