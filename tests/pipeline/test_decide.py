"""The attempt window: k of n usable frames for one person; everything else denies."""

from __future__ import annotations

import pytest

from facelock_mqtt.pipeline.decide import Attempt, Observation
from facelock_mqtt.settings import DecisionSettings

SETTINGS = DecisionSettings(k=2, n=4, window_s=3.0)


def frame(
    t: float, person: str | None = None, usable: bool = True, score: float | None = 0.7, candidate: str | None = None
) -> Observation:
    reason = "match" if person else "no match"
    return Observation(t, person, score if usable else None, usable, reason, None, None, candidate or person)


def run(*observations: Observation) -> tuple[Attempt, list]:
    attempt = Attempt(SETTINGS, threshold=0.56, target_far=1e-6)
    return attempt, [attempt.add(o) for o in observations]


def test_k_matching_frames_recognise_at_the_kth():
    _, decisions = run(frame(0.0, "ann"), frame(0.1), frame(0.2, "ann"))
    assert decisions[:2] == [None, None]
    assert decisions[2].outcome == "recognized" and decisions[2].person == "ann"
    assert decisions[2].frames_used == 3 and decisions[2].score == pytest.approx(0.7)


def test_denied_as_soon_as_k_cannot_be_reached():
    _, decisions = run(frame(0.0), frame(0.1), frame(0.2, "ann"), frame(0.3))
    assert decisions[:3] == [None, None, None]
    assert decisions[3].outcome == "denied" and decisions[3].person is None
    assert decisions[3].failed  # counts toward lockout


def test_two_people_matching_in_one_attempt_deny():
    _, decisions = run(frame(0.0, "ann"), frame(0.1, "bob"))
    assert decisions[1].outcome == "denied" and "conflicting" in decisions[1].reason


def test_poor_quality_frames_never_count_and_the_window_denies():
    attempt, decisions = run(*(frame(0.1 * i, usable=False) for i in range(10)))
    assert decisions == [None] * 10  # unusable frames neither match nor use up n
    assert not attempt.expired(2.9) and attempt.expired(3.1)
    decision = attempt.close(3.1)
    assert decision.outcome == "denied" and "no usable face" in decision.reason
    assert not decision.failed  # a passer-by turned away is no failed attempt


def test_a_window_ending_short_of_k_denies():
    attempt, decisions = run(frame(0.0, "ann"))
    assert decisions == [None]
    decision = attempt.close(3.5)
    assert decision.outcome == "denied" and decision.failed and "1 of 1" in decision.reason


def test_a_frame_after_the_window_never_counts():
    _, decisions = run(frame(0.0, "ann"), frame(3.5, "ann"))
    assert decisions[1].outcome == "denied" and decisions[1].frames_used == 1


def test_a_denial_names_nobody_but_keeps_the_closest_candidate():
    """A stranger close to ann, then closer to bob, below threshold: the decision names no person;
    the candidate is whoever gave the best score, which is the score reported."""
    _, decisions = run(frame(0.0, score=0.41, candidate="ann"), frame(0.1, score=0.52, candidate="bob"),
                       frame(0.2, score=0.30, candidate="ann"))  # fmt: skip
    denied = decisions[2]
    assert denied.outcome == "denied" and denied.person is None
    assert (denied.candidate, denied.score) == ("bob", pytest.approx(0.52))


def test_a_recognition_names_the_person_as_its_candidate():
    _, decisions = run(frame(0.0, "ann", score=0.8), frame(0.1, "ann", score=0.9))
    assert (decisions[1].person, decisions[1].candidate, decisions[1].score) == ("ann", "ann", pytest.approx(0.9))
