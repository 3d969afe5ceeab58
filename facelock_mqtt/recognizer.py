"""The recognizer: bundle + engine + gallery + matcher, shared by the CLI and the service."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EnrollmentError
from .guards.audit import AuditLog, list_records
from .guards.drift import Aging, score_trend
from .guards.integrity import audited_change, check_gallery, flush_journal, record_gallery
from .models.bundle import Bundle, load_bundle
from .models.default_bundle import default_bundle
from .pipeline.engine import FaceEngine, FaceResult
from .pipeline.match import Identification, Matcher
from .pipeline.quality import face_size
from .settings import MatchSettings, ModelSettings, QualitySettings
from .storage.gallery import Gallery, GalleryEditor, Sample

log = logging.getLogger(__name__)

GALLERY_FILE = "gallery.db"
BATCH_FAR = 1e-3  # photos of one enrollment must match each other at this false-accept rate


def resolve_bundle(model: ModelSettings, data_dir: Path) -> Bundle:
    return load_bundle(model.bundle) if model.bundle else default_bundle(data_dir, int8=model.int8_embedder)


class Recognizer:
    def __init__(
        self,
        data_dir: Path,
        model: ModelSettings,
        quality: QualitySettings,
        match: MatchSettings,
        bundle: Bundle | None = None,
        audit: AuditLog | None = None,
        accept_gallery: bool = False,
    ) -> None:
        self.bundle = bundle or resolve_bundle(model, data_dir)
        self.engine = FaceEngine(self.bundle, model, quality)
        self.match_settings = match
        self.quality_settings = quality
        self.fingerprint = self.bundle.manifest.fingerprint
        self.audit = audit
        self.gallery = Gallery(Path(data_dir) / GALLERY_FILE)
        if audit is not None:
            if flush_journal(audit, self.gallery, replayed=True):  # a change whose record a crash cut off
                log.warning("gallery: appended the audit record of a change interrupted by a crash")
            if accept_gallery:
                record_gallery(audit, self.gallery, "accepted by the user")
            check_gallery(audit, self.gallery)
        # Templates of another bundle are useless to this one: recompute from stored crops.
        with self._change("templates recomputed for " + self.fingerprint):
            self.gallery.sync(self.fingerprint, self.engine.embed_aligned)
        self._matcher: Matcher | None = None
        self._version = self.gallery.data_version()

    @contextmanager
    def _change(self, action: str, person: str | None = None, actor: str | None = None) -> Iterator[None]:
        """A gallery change, vouched for in the audit trail in the same commit (integrity.py)."""
        if self.audit is None:
            yield
        else:
            with audited_change(self.audit, self.gallery, action, person, actor):
                yield
        self._matcher = None

    @property
    def matcher(self) -> Matcher:
        version = self.gallery.data_version()
        if version != self._version:  # enrolled or removed by another process (the CLI)
            if self.audit is not None:
                flush_journal(self.audit, self.gallery, replayed=True)  # the other process may have crashed
                check_gallery(self.audit, self.gallery)
            self._matcher, self._version = None, version
        if self._matcher is None:
            templates, people = self.gallery.templates(self.fingerprint)
            thresholds = self.bundle.band_thresholds(self.match_settings.target_far)
            self._matcher = Matcher(
                templates, people, thresholds, self.match_settings.target_far, self.match_settings.min_margin
            )
        return self._matcher

    def enrollment_sample(self, image: np.ndarray, source: str) -> Sample:
        """One enrollment sample, or EnrollmentError saying why this image is refused."""
        faces = self.engine.faces(image)
        if not faces:
            raise EnrollmentError(f"{source}: no face found")
        large = [f for f in faces if face_size(f) >= self.quality_settings.min_face_px]
        if len(large) > 1:
            raise EnrollmentError(f"{source}: {len(large)} faces found; enroll from a photo of one person")
        result = self.engine.analyze_faces(image, faces)
        if result is None or result.embedding is None:
            reasons = "; ".join(result.quality.reasons) if result else "no face found"
            raise EnrollmentError(f"{source}: poor quality: {reasons}")
        return Sample(result.crop, result.embedding, source)

    def enroll(
        self, name: str, images: list[tuple[str, np.ndarray]], actor: str | None = None, force: bool = False
    ) -> int:
        """Enroll every image or none: any refused image refuses the whole enrollment.

        A photo that would merge two people is refused too (see `merge_problem`); `force`
        overrides that check only, and the audit trail records that it was forced.
        """
        name = name.strip()
        if not name:
            raise EnrollmentError("a person needs a name")
        samples, problems = [], []
        for source, image in images:
            try:
                sample = self.enrollment_sample(image, source)
            except EnrollmentError as exc:
                problems.append(str(exc))
                continue
            merge = self.merge_problem(name, sample.embedding)
            if merge is not None and not force:
                problems.append(f"{source}: {merge} (--force to enroll anyway)")
            samples.append(sample)
        if not force:
            problems += [f"{samples[i].source}: {why}" for i, why in self._strangers_in_batch(samples).items()]
        if problems:
            raise EnrollmentError("enrollment refused, nothing written: " + " | ".join(problems))
        action = f"enrolled {len(samples)} sample(s){' (forced past the merge check)' if force else ''}"
        with self._change(action, name, actor):
            return self.gallery.add(name, samples, self.fingerprint)

    def _strangers_in_batch(self, samples: list[Sample]) -> dict[int, str]:
        """Photos of one enrollment must show one person: each must match another photo of the
        batch. The looser FAR 1e-3 threshold is used here (99 % of genuine LFW pairs pass it),
        as two photos of one person taken apart often fall below the 1e-6 door threshold.
        Returns why, for each sample (by index) that matches none of the others."""
        if len(samples) < 2:
            return {}
        embeddings = np.stack([sample.embedding for sample in samples]).astype(np.float32)
        scores = embeddings @ embeddings.T
        np.fill_diagonal(scores, -np.inf)
        threshold = self.bundle.threshold_for(BATCH_FAR).threshold
        return {
            i: f"matches none of the other photos (best score {scores[i].max():.3f} <= {threshold:.3f}); "
            "enroll one person at a time"
            for i in range(len(samples))
            if not scores[i].max() > threshold
        }

    def merge_problem(self, name: str, embedding: np.ndarray) -> str | None:
        """Why adding this face to `name` would merge two people, or None when it would not.

        Two ways to merge: the face matches someone else above the calibrated threshold (a new
        name for an enrolled face, or another person's photo), or `name` is enrolled and the
        face matches none of their templates above the threshold (someone else's photo added
        to them, who would then unlock as them).
        """
        other = self.other_person_match(embedding, name)
        if other is not None:
            return f"matches another person ({other[0]}, score {other[1]:.3f})"
        matcher = self.matcher
        own = matcher.people == name
        if own.any():
            best = float(np.max(matcher.templates[own] @ embedding.astype(np.float32)))
            threshold = matcher.threshold.threshold
            if not best > threshold:
                return f"does not match {name}'s enrolled photos (best score {best:.3f} <= threshold {threshold:.3f})"
        return None

    def remove(self, name: str, actor: str | None = None) -> bool:
        with self._change("removed", name, actor):
            return self.gallery.remove(name)

    def identify(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> Identification:
        return self.identify_located(self.locate(image, region))

    def locate(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None) -> FaceResult | None:
        """The frame's best face, aligned and quality-checked: `identify` before the embedding."""
        return self.engine.locate(image, region)

    def identify_located(self, result: FaceResult | None) -> Identification:
        """`identify` of a face `locate` found: embedded and matched unless its quality failed
        (then it can never be matched)."""
        if result is None or not result.quality.ok:
            return Identification(result, None)
        result = dataclasses.replace(result, embedding=self.engine.embed_one(result.crop))
        return Identification(result, self.matcher.match(result.embedding, result.quality))

    def verify(self, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
        """Cosine score of the two images' best faces and the threshold in force."""
        results = [self.engine.locate(image) for image in (first, second)]
        if results[0] is None or results[1] is None:
            raise EnrollmentError("no face found in " + ("the first" if results[0] is None else "the second") + " image")
        # Both faces in one run: a batch of 2 costs less CPU than two runs of 1 (docs/BENCHMARKS.md).
        vectors = self.engine.embed_aligned([result.crop for result in results])
        score = float(vectors[0] @ vectors[1])
        return score, self.bundle.threshold_for(self.match_settings.target_far).threshold

    def close(self) -> None:
        self.gallery.close()
        if self.audit is not None:
            self.audit.close()

    # --- the owner's panel (facelock_mqtt/web): per-photo verdicts and gallery edits ---

    def other_person_match(self, embedding: np.ndarray, name: str) -> tuple[str, float] | None:
        """The best-matching enrolled person other than `name` above the threshold, if any:
        adding such a photo to `name` would merge two people into one."""
        matcher = self.matcher
        if not len(matcher.people):
            return None
        scores = matcher.templates @ embedding.astype(np.float32)
        others = matcher.people != name
        if not others.any():
            return None
        best = int(np.argmax(np.where(others, scores, -np.inf)))
        if scores[best] > matcher.threshold.threshold:
            return str(matcher.people[best]), float(scores[best])
        return None

    def photo_verdicts(self, name: str, images: list[tuple[str, np.ndarray]]) -> list[PhotoVerdict]:
        """Each photo's verdict for enrolling `name`: its face crop, or why it would be refused
        (the same checks as `enroll`, photo by photo)."""
        verdicts: list[PhotoVerdict] = []
        samples: list[tuple[int, Sample]] = []  # (index in verdicts, sample) of photos with a usable face
        for source, image in images:
            try:
                sample = self.enrollment_sample(image, source)
            except EnrollmentError as exc:
                verdicts.append(PhotoVerdict(source, str(exc).removeprefix(f"{source}: "), None))
                continue
            samples.append((len(verdicts), sample))
            verdicts.append(PhotoVerdict(source, self.merge_problem(name.strip(), sample.embedding), sample.crop))
        for i, why in self._strangers_in_batch([sample for _, sample in samples]).items():
            index = samples[i][0]
            if verdicts[index].refused is None:
                verdicts[index] = dataclasses.replace(verdicts[index], refused=why)
        return verdicts

    @property
    def editor(self) -> GalleryEditor:
        return GalleryEditor(self.gallery)

    def remove_template(self, sample_id: int, actor: str | None = None) -> str | None:
        """Remove one template (sample); returns its person, None when there was no such template."""
        info = self.editor.template_info(sample_id)
        if info is None:
            return None
        with self._change(f"removed template {sample_id}", info.person, actor):
            return self.editor.remove_template(sample_id)

    def rename(self, old: str, new: str, actor: str | None = None) -> bool:
        new = new.strip()
        if not new:
            raise EnrollmentError("a person needs a name")
        with self._change(f"renamed {old!r} to {new!r}", new, actor):
            return self.editor.rename(old, new)

    # --- maintenance (issue 13): guarded template updates and template aging ---

    def guarded_update(
        self, name: str, frames: list[tuple[np.ndarray, object]], liveness_score: float | None,
        liveness_threshold: float, k: int, source: str = "unlock",
    ) -> TemplateUpdate:  # fmt: skip
        """Add one adaptive template of `name` from the frames (image, detected face) of a recent
        unlock, only when every guard holds: liveness passed with LIVENESS_MARGIN, k frames
        matched `name` with SCORE_MARGIN above the threshold (and the runner-up margin), the new
        face still matches `name`'s ORIGINAL enrollment photos with that margin, and it would
        not merge two people. Adaptive templates never vouch for the next one, so nobody can walk
        a person's templates towards another face; at most MAX_ADAPTIVE are kept (oldest goes).
        """
        refusal, sample = self._update_candidate(name, frames, liveness_score, liveness_threshold, k, source)
        if sample is None:
            log.info("template update for %s refused: %s", name, refusal)
            return TemplateUpdate(False, refusal or "refused")
        adaptive = [t for t in self.editor.template_infos(name) if t.source.startswith(ADAPTIVE_SOURCE)]
        for old in adaptive[: max(0, len(adaptive) - MAX_ADAPTIVE + 1)]:
            self.remove_template(old.id, actor=UPDATE_ACTOR)
        with self._change("adaptive template added from an unlock", name, UPDATE_ACTOR):
            self.gallery.add(name, [sample], self.fingerprint)
        return TemplateUpdate(True, "added")

    def _update_candidate(
        self, name: str, frames: list[tuple[np.ndarray, object]], liveness_score: float | None,
        liveness_threshold: float, k: int, source: str,
    ) -> tuple[str | None, Sample | None]:  # fmt: skip
        if liveness_score is None or not liveness_score >= liveness_threshold + LIVENESS_MARGIN:
            return f"liveness {liveness_score} not at threshold {liveness_threshold:.3f} + {LIVENESS_MARGIN}", None
        matcher = self.matcher
        wanted = matcher.threshold.threshold + SCORE_MARGIN
        matched = []
        for image, face in frames:
            result = self.engine.analyze_faces(image, [face])
            if result is None or result.embedding is None:
                continue
            match = matcher.match(result.embedding, result.quality)
            if match.accepted and match.person == name and match.score > wanted:
                matched.append((match.score, result))
        if len(matched) < k:
            return f"{len(matched)} frame(s) matched {name} above {wanted:.3f}, {k} needed", None
        best = max(matched, key=lambda pair: pair[0])[1]
        originals = self._original_templates(name)
        original = float(np.max(originals @ best.embedding.astype(np.float32))) if len(originals) else -1.0
        if not original > wanted:
            return f"does not match {name}'s original enrollment (best {original:.3f} <= {wanted:.3f})", None
        merge = self.merge_problem(name, best.embedding)
        if merge is not None:
            return merge, None
        return None, Sample(best.crop, best.embedding, ADAPTIVE_SOURCE + source)

    def _original_templates(self, name: str) -> np.ndarray:
        """`name`'s templates from enrollment, without the adaptive ones."""
        originals = {t.id for t in self.editor.template_infos(name) if not t.source.startswith(ADAPTIVE_SOURCE)}
        vectors = [v for sid, v in self.editor.template_vectors(name, self.fingerprint) if sid in originals]
        return np.stack(vectors) if vectors else np.zeros((0, 0), np.float32)

    def template_aging(self) -> list[Aging]:
        """Each enrolled person's trend of genuine scores over their unlocks in the audit trail;
        `flagged` when it falls steadily (re-enroll them, or let guarded updates follow)."""
        if self.audit is None:
            return []
        history: dict[str, list[tuple[float, float]]] = {}
        for record in list_records(self.audit.path, event_type="recognized"):
            if record.person is not None and isinstance(record.details.get("score"), int | float):
                history.setdefault(record.person, []).append((record.ts, float(record.details["score"])))
        enrolled = {p.name for p in self.gallery.people()}
        return [score_trend(person, points) for person, points in sorted(history.items()) if person in enrolled]


@dataclass(frozen=True)
class PhotoVerdict:
    source: str
    refused: str | None  # why the photo would be refused; None: it would be enrolled
    crop: np.ndarray | None  # the aligned face crop, when a face was found


# Guarded template updates: adaptive templates are marked by their source and capped.
ADAPTIVE_SOURCE = "adaptive:"
MAX_ADAPTIVE = 3  # per person; enrollment templates are never replaced
LIVENESS_MARGIN = 0.1  # above the liveness threshold
SCORE_MARGIN = 0.05  # cosine above the served threshold, for the matched frames and the originals
UPDATE_ACTOR = "guarded template update"


@dataclass(frozen=True)
class TemplateUpdate:
    added: bool
    reason: str  # "added", or why not
