"""The decision: a short attempt window per camera, k of n usable frames for the same person.

An attempt opens on the first frame that shows a face and ends as:
- `recognized`: k usable frames matched the same person (above the calibrated threshold, with
  the margin over the runner-up) before n usable frames were seen;
- `denied`: k can no longer be reached, another person also matched (conflict), or the window
  ran out with faces seen but not enough matches (poor quality and unknown faces both deny).
The caller applies liveness, stream sanity and lockout on top; nothing here unlocks by itself.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..settings import DecisionSettings
from .match import Identification


@dataclass(frozen=True)
class Observation:
    t: float  # decision clock: video position in replay, capture time live
    person: str | None  # accepted person of this frame, if any
    score: float | None
    usable: bool  # a face of acceptable quality was embedded and matched against the gallery
    reason: str
    landmarks: np.ndarray | None
    box: np.ndarray | None
    candidate: str | None = None  # best-scoring enrolled person, accepted or not


@dataclass(frozen=True)
class Decision:
    outcome: str  # "recognized" or "denied"
    person: str | None  # the recognised person; None on every denial, whoever came closest
    reason: str
    score: float | None  # best score of the decisive person (or of the attempt)
    threshold: float
    target_far: float
    frames_used: int  # usable frames of the attempt
    frames_seen: int  # frames with a face
    started: float
    ended: float
    observations: tuple[Observation, ...] = field(repr=False)
    candidate: str | None = None  # whose template gave `score`: on a denial, who the face came closest to

    @property
    def failed(self) -> bool:
        """A denial that counts toward lockout: a usable face was looked at and refused."""
        return self.outcome != "recognized" and self.frames_used > 0


def observe(identification: Identification, t: float) -> Observation:
    result, match = identification.result, identification.match
    accepted = match is not None and match.accepted
    return Observation(
        t=t,
        person=match.person if accepted else None,
        score=match.score if match is not None and match.person is not None else None,
        usable=match is not None,
        reason=identification.reason,
        landmarks=None if result is None else result.face.landmarks,
        box=None if result is None else result.face.box,
        candidate=None if match is None else match.person,
    )


class Attempt:
    """Collects one attempt's observations and says when it is decided."""

    def __init__(self, settings: DecisionSettings, threshold: float, target_far: float) -> None:
        self.settings = settings
        self.threshold = threshold
        self.target_far = target_far
        self.observations: list[Observation] = []

    @property
    def started(self) -> float | None:
        return self.observations[0].t if self.observations else None

    def expired(self, now: float) -> bool:
        return self.started is not None and now - self.started > self.settings.window_s

    def add(self, observation: Observation) -> Decision | None:
        if self.expired(observation.t):  # a frame after the window never counts
            return self.close(observation.t)
        self.observations.append(observation)
        return self._decide(observation.t, final=False)

    def close(self, now: float) -> Decision | None:
        """End an open attempt (window over or stream ended): whatever is missing denies."""
        return self._decide(now, final=True) if self.observations else None

    def _decide(self, now: float, final: bool) -> Decision | None:
        usable = [o for o in self.observations if o.usable]
        votes = Counter(o.person for o in usable if o.person is not None)
        if len(votes) > 1:
            return self._end("denied", None, f"conflicting matches: {sorted(votes)}", now)
        if votes:
            person, count = votes.most_common(1)[0]
            if count >= self.settings.k:
                return self._end("recognized", person, f"{count} of {len(usable)} frames matched", now)
        remaining = self.settings.n - len(usable)
        if sum(votes.values()) + remaining < self.settings.k:
            return self._end("denied", None, self._why_not(usable), now)
        if final or self.expired(now):
            return self._end("denied", None, "window ended: " + self._why_not(usable), now)
        return None

    def _why_not(self, usable: list[Observation]) -> str:
        if not usable:
            reasons = Counter(o.reason for o in self.observations)
            return "no usable face (" + ", ".join(r for r, _ in reasons.most_common(2)) + ")"
        matched = sum(o.person is not None for o in usable)
        return f"{matched} of {len(usable)} usable frames matched, {self.settings.k} needed"

    def _end(self, outcome: str, person: str | None, reason: str, now: float) -> Decision:
        relevant = [o for o in self.observations if o.score is not None and (person is None or o.person == person)]
        best = max(relevant, key=lambda o: o.score) if relevant else None
        return Decision(
            outcome=outcome,
            person=person,
            reason=reason,
            score=None if best is None else best.score,
            threshold=self.threshold,
            target_far=self.target_far,
            frames_used=sum(o.usable for o in self.observations),
            frames_seen=len(self.observations),
            started=self.observations[0].t,
            ended=now,
            observations=tuple(self.observations),
            candidate=person if best is None else best.candidate or person,
        )
