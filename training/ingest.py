"""Ingest: `<identity>/<image>` folders -> aligned 112x112 crops + a dataset manifest.

Detection and alignment run once per image through the serving pipeline's own FaceEngine, so
training crops match what the door camera produces; a crop already in the output folder (same
file SHA-256) is reused. Exact duplicates (file SHA-256) and near duplicates within one identity
(dHash) are dropped. Quality is measured with the service's own code (facelock_mqtt.pipeline.quality).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from facelock_mqtt.errors import ImageError
from facelock_mqtt.pipeline.align import ARCFACE_TEMPLATE
from facelock_mqtt.pipeline.detect import Face
from facelock_mqtt.pipeline.engine import FaceEngine
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import Quality, assess
from facelock_mqtt.settings import QualitySettings
from facelock_mqtt.tools.evaluate import condition_of, image_files

from .config import IngestConfig, SourceConfig
from .dataset import MANIFEST, DatasetManifest, Record, save_manifest
from .progress import Progress

log = logging.getLogger(__name__)

# The serving quality bar: a crop the service would refuse is kept, tagged `poor_quality`.
SERVING_QUALITY = QualitySettings()
# A pre-aligned crop's landmarks are the template itself.
ALIGNED_FACE = Face(np.array([0, 0, 112, 112], np.float32), ARCFACE_TEMPLATE, 1.0)


def dhash(crop: np.ndarray) -> int:
    """64-bit difference hash of the grey levels: survives re-encoding and small changes."""
    grey = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (grey[:, 1:] > grey[:, :-1]).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def tags_of(path: Path, crop: np.ndarray, quality: Quality, cfg: IngestConfig) -> list[str]:
    """Condition words from the file name plus measured conditions."""
    tags = [t for t in [condition_of(path)] if t]
    if quality.brightness < cfg.low_light_brightness:
        tags.append("low_light")
    if quality.blur < cfg.blurry_below:
        tags.append("blurry")
    channels = crop.reshape(-1, 3).astype(np.int16)
    if np.abs(channels[:, 0] - channels[:, 1]).max() <= 2 and np.abs(channels[:, 1] - channels[:, 2]).max() <= 2:
        tags.append("grayscale")  # like IR night footage
    if quality.reasons:
        tags.append("poor_quality")
    return tags


class Ingester:
    """Turns source folders into crops under `<out>/crops/` and records."""

    def __init__(self, cfg: IngestConfig, out: Path, engine: FaceEngine | None) -> None:
        self.cfg, self.out, self.engine = cfg, Path(out), engine
        self.records: list[Record] = []
        self.dropped: Counter[str] = Counter()
        self.seen_sha: set[str] = set()
        self.hashes: dict[str, list[int]] = {}
        self.cache = self._previous_records()

    def _previous_records(self) -> dict[str, Record]:
        """Records of an earlier ingest into the same folder whose crop still exists."""
        path = self.out / MANIFEST
        if not path.is_file():
            return {}
        try:
            old = DatasetManifest.model_validate_json(path.read_text())
        except ValueError:
            log.warning("ignoring unreadable earlier manifest %s", path)
            return {}
        return {f"{r.identity}:{r.sha256}": r for r in old.records if (self.out / r.crop).is_file()}

    def run(self) -> DatasetManifest:
        for source in self.cfg.sources:
            self.ingest_source(source)
        return DatasetManifest(records=self.records, dropped=dict(self.dropped))

    def ingest_source(self, source: SourceConfig) -> None:
        name = source.name or source.path.name
        files = image_files(source.path)
        per_identity = Counter(identity for identity, _ in files)
        eligible = (i for i, n in per_identity.items() if n >= source.min_images and i not in source.exclude)
        keep = sorted(eligible)[: source.max_identities]
        keep_set = set(keep)
        if not source.aligned and self.engine is None:
            raise ValueError("detection needs a FaceEngine")
        chosen = [(identity, path) for identity, path in files if identity in keep_set]
        bar = Progress(len(chosen), f"ingest {name}")
        for identity, path in chosen:
            # Namespaced: equal folder names in two sources are not the same person.
            self.ingest_file(name, f"{name}/{identity}", path, source.aligned)
            bar.update(1, kept=len(self.records))
        bar.close()
        log.info("source %s: %d identities considered", name, len(keep))

    def ingest_file(self, source: str, identity: str, path: Path, aligned: bool) -> None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("skipping %s: %s", path, exc)
            self.dropped["unreadable"] += 1
            return
        sha = hashlib.sha256(data).hexdigest()
        if sha in self.seen_sha:
            self.dropped["exact_duplicate"] += 1
            return
        self.seen_sha.add(sha)
        record = self.cache.get(f"{identity}:{sha}") or self._new_record(source, identity, path, sha, aligned)
        if record is None:
            return
        hashes, value = self.hashes.setdefault(identity, []), int(record.dhash, 16)
        if any((value ^ h).bit_count() <= self.cfg.near_duplicate_bits for h in hashes):
            self.dropped["near_duplicate"] += 1
            return
        hashes.append(value)
        self.records.append(record)

    def _new_record(self, source: str, identity: str, path: Path, sha: str, aligned: bool) -> Record | None:
        try:
            image = read_image(path)
        except ImageError as exc:
            log.warning("skipping: %s", exc)
            self.dropped["unreadable"] += 1
            return None
        if aligned:
            if image.shape[:2] != (112, 112):
                self.dropped["aligned_not_112x112"] += 1
                return None
            crop, quality, face_px = image, assess(ALIGNED_FACE, image, SERVING_QUALITY), None
        else:
            result = self.engine.analyze(image)
            if result is None:
                self.dropped["no_face"] += 1
                return None
            crop, quality, face_px = result.crop, result.quality, result.quality.size_px
        relative = Path("crops") / identity / f"{path.stem}-{sha[:8]}.png"  # identity is <source>/<name>
        (self.out / relative).parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(self.out / relative), crop):
            raise OSError(f"cannot write crop {self.out / relative}")
        return Record(
            crop=relative.as_posix(),
            original=str(path),
            identity=identity,
            source=source,
            sha256=sha,
            dhash=f"{dhash(crop):016x}",
            brightness=round(quality.brightness, 2),
            blur=round(quality.blur, 2),
            face_px=None if face_px is None else round(face_px, 1),
            tags=tags_of(path, crop, quality, self.cfg),
        )


def ingest(cfg: IngestConfig, out: Path, engine: FaceEngine | None) -> DatasetManifest:
    """Build (or refresh) the dataset in `out`; `engine` may be None when every source is aligned."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Ingester(cfg, out, engine).run()
    save_manifest(manifest, out)
    return manifest


def gap_warnings(manifest: DatasetManifest, cfg: IngestConfig) -> list[str]:
    """What the data lacks for a door camera: dark, grey (IR), small or blurred faces, variety."""
    records, warnings = manifest.records, []
    n = max(len(records), 1)
    tags = Counter(t for r in records for t in r.tags)
    per_identity = Counter(r.identity for r in records)
    if tags["low_light"] / n < cfg.min_low_light_fraction:
        warnings.append(
            f"only {tags['low_light']} low-light images ({100 * tags['low_light'] / n:.1f} %): "
            "night-time faces will be poorly learned and poorly evaluated"
        )
    if tags["grayscale"] / n < 0.05:
        warnings.append(f"only {tags['grayscale']} grayscale (IR-like) images: add night-camera footage")
    if tags["blurry"] / n < 0.02:
        warnings.append(f"only {tags['blurry']} blurry images: motion blur at the door is not represented")
    sized = [r.face_px for r in records if r.face_px is not None]
    if not sized or sum(1 for s in sized if s < 80) / len(sized) < 0.05:
        warnings.append("few or no small faces (< 80 px): a camera far from the door is not represented")
    if per_identity and sum(1 for c in per_identity.values() if c < 2) / len(per_identity) > 0.5:
        warnings.append("most identities have a single image: they give no genuine pairs")
    if len(per_identity) < 100:
        warnings.append(f"only {len(per_identity)} identities: too few to learn faces of strangers")
    return warnings


def summary(manifest: DatasetManifest, cfg: IngestConfig) -> str:
    records = manifest.records
    per_identity = Counter(r.identity for r in records)
    counts = sorted(per_identity.values()) or [0]
    lines = [
        f"identities: {len(per_identity)}   images: {len(records)}   "
        f"images per identity: min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}",
        "sources: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.source for r in records).items())),
        "dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(manifest.dropped.items())) or "none"),
        "conditions: " + (", ".join(f"{k} {v}" for k, v in Counter(t for r in records for t in r.tags).most_common()) or "none"),
    ]
    lines += [f"WARNING: {w}" for w in gap_warnings(manifest, cfg)]
    return "\n".join(lines)
