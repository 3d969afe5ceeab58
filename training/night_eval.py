"""Night (issue 13): does a low-light preprocessing of the aligned face help on dark faces?

Each candidate (CLAHE on the L channel, an adaptive gamma that brings the face's mean grey to
the middle) is applied to the aligned 112x112 crop before the embedder, and measured on the dark
slices of the shared data (Yale left/right light with its centre/normal shots, ORL, the dimmest
third of the NUAA live frames): genuine TAR and impostor false accepts over every pair of each
slice at the thresholds for FAR 1e-3 and 1e-6. A candidate is adopted only if it raises TAR on
the dark slices at no false-accept cost there, and then again at no FAR cost on LFW all pairs.

    python -m training.night_eval --data ../shared/data [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.models.metrics import all_pairs_scores
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import ModelSettings, QualitySettings

FARS = (1e-3, 1e-6)
_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))


def clahe(crop: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(crop, cv2.COLOR_BGR2LAB)
    lab[..., 0] = _CLAHE.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)


def gamma(crop: np.ndarray) -> np.ndarray:
    mean = max(float(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)[16:96, 16:96].mean()), 1.0) / 255.0
    power = float(np.clip(np.log(0.5) / np.log(mean), 0.4, 2.5)) if mean < 1.0 else 1.0
    return np.clip(255.0 * (crop / 255.0) ** power, 0, 255).astype(np.uint8)


VARIANTS = {"none": lambda crop: crop, "clahe": clahe, "gamma": gamma}


def crops(engine: FaceEngine, items: list[tuple[str, Path]]) -> list[tuple[str, np.ndarray, float]]:
    out = []
    for identity, path in items:
        result = engine.analyze(read_image(path), embed_poor=True)
        if result is not None:
            out.append((identity, result.crop, result.quality.brightness))
    return out


def dark_slices(engine: FaceEngine, data: Path) -> dict[str, list]:
    yale = [p for p in sorted((data / "yale").rglob("*")) if p.is_file()]
    lights = ("leftlight", "rightlight", "centerlight", "normal")
    orl = [p for p in sorted((data / "orl").rglob("*")) if p.suffix.lower() in (".pgm", ".png", ".jpg", ".bmp")]
    nuaa = crops(engine, [(p.parent.name, p) for p in sorted((data / "nuaa" / "live").glob("*/*.jpg"))])
    cut = np.percentile([b for _, _, b in nuaa], 33)
    return {
        "yale side light": crops(engine, [(p.name.split(".")[0], p) for p in yale if any(w in p.name for w in lights)]),
        "orl": crops(engine, [(p.parent.name, p) for p in orl]),
        "nuaa dim third": [c for c in nuaa if c[2] < cut],
    }


def evaluate(data: Path, models: Path) -> dict:
    bundle = default_bundle(models)
    engine = FaceEngine(bundle, ModelSettings(), QualitySettings())
    thresholds = {far: bundle.threshold_for(far).threshold for far in FARS}
    result = {}
    for name, items in dark_slices(engine, data).items():
        labels = [identity for identity, _, _ in items]
        for variant, apply in VARIANTS.items():
            genuine, impostor = all_pairs_scores(engine.embed_aligned([apply(c) for _, c, _ in items]), labels)
            row = {"genuine": len(genuine), "impostor": len(impostor)}
            row.update({f"tar@{far:g}": round(float(np.mean(genuine > t)), 4) for far, t in thresholds.items()})
            row.update({f"false_accepts@{far:g}": int(np.sum(impostor > t)) for far, t in thresholds.items()})
            result[f"{name} / {variant}"] = row
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.night_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--models", type=Path, default=Path("runs/night_models"), help="cache of the default bundle")
    parser.add_argument("--json", type=Path, help="write the table as JSON")
    args = parser.parse_args(argv)
    result = evaluate(args.data, args.models)
    for key, row in result.items():
        print(key, row)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
