"""Matching: cosine similarity of a probe against every enrolled template.

The threshold depends on the probe's quality band (models/bundle.py `BandThresholds`): the band
of a comparison is the band of the PROBE, because every enrolled template passed enrollment's
quality gate, while a door frame may be small or blurred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models.bundle import BandThresholds, Threshold
from .engine import FaceResult
from .quality import Quality


@dataclass(frozen=True)
class MatchResult:
    person: str | None  # best-scoring person (None when the gallery is empty)
    score: float
    second_person: str | None
    second_score: float | None
    threshold: float  # the effective one: the probe's band threshold, never below the global one
    target_far: float
    min_margin: float
    band: str | None = None  # the quality band whose threshold applied; None when the bundle has none

    @property
    def margin(self) -> float | None:
        return None if self.second_score is None else self.score - self.second_score

    @property
    def accepted(self) -> bool:
        """Above the calibrated threshold, and clear of the runner-up when there is one (a tie denies)."""
        if self.person is None or not self.score > self.threshold:
            return False
        return self.margin is None or (self.margin > 0.0 and self.margin >= self.min_margin)

    def as_dict(self) -> dict:
        """A refused match names nobody as the person; who came closest is the `candidate`."""
        return {
            "person": self.person if self.accepted else None,
            "candidate": self.person,
            "score": round(self.score, 4),
            "second_person": self.second_person,
            "second_score": None if self.second_score is None else round(self.second_score, 4),
            "margin": None if self.margin is None else round(self.margin, 4),
            "threshold": round(self.threshold, 4),
            "band": self.band,
            "target_far": self.target_far,
            "accepted": self.accepted,
        }


class Matcher:
    """Templates held as one matrix; a probe is one matrix-vector product."""

    def __init__(
        self, templates: np.ndarray, people: list[str], thresholds: BandThresholds | Threshold, target_far: float,
        min_margin: float,
    ) -> None:  # fmt: skip
        self.templates = templates.astype(np.float32)
        self.people = np.asarray(people)
        self.names = sorted(set(people))
        # A bare Threshold is a bundle without quality bands.
        self.bands = thresholds if isinstance(thresholds, BandThresholds) else BandThresholds(thresholds)
        self.threshold = self.bands.threshold  # the global one: enrollment checks compare gated photos
        self.target_far = target_far
        self.min_margin = min_margin

    def match(self, embedding: np.ndarray, quality: Quality | None) -> MatchResult:
        scores = self.templates @ embedding.astype(np.float32) if len(self.people) else np.zeros(0, np.float32)
        return self.match_scores(scores, quality)

    def match_scores(self, scores: np.ndarray, quality: Quality | None) -> MatchResult:
        """The match for a probe's cosine scores against each template (in `templates` order):
        a remote worker's scores are judged by the same rules as the door's own. `quality` is
        the probe's; None (not known) applies the strictest band's threshold. No band is
        calibrated on the detector's score (it cannot be re-measured on aligned crops), so bands
        with a score range count as covering every probe."""
        best = {}
        if len(self.people):
            for name in self.names:
                best[name] = float(scores[self.people == name].max())
        ranked = sorted(best.items(), key=lambda item: -item[1])
        person, score = ranked[0] if ranked else (None, -1.0)
        second_person, second_score = ranked[1] if len(ranked) > 1 else (None, None)
        if quality is None:
            band, threshold = self.bands.strictest()
        else:
            band, threshold = self.bands.for_probe(quality.size_px, quality.blur)
        return MatchResult(
            person, score, second_person, second_score, threshold, self.target_far, self.min_margin, band
        )


@dataclass(frozen=True)
class Identification:
    result: FaceResult | None
    match: MatchResult | None

    @property
    def reason(self) -> str:
        if self.result is None:
            return "no face"
        if not self.result.quality.ok:
            return "; ".join(self.result.quality.reasons)
        if self.match is None or self.match.person is None:
            return "nobody enrolled"
        if not self.match.accepted:
            return "below threshold or margin"
        return "match"
