"""Impostor flood (CI size): real LFW faces through the default embedder, 2,000 attempts by
people who are not enrolled, through the real matcher, k-of-n decision and lockout at the
default settings. The full 10,000-attempt run is `python -m facelock_mqtt.tools.flood` (docs/SECURITY.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facelock_mqtt.tools import flood
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.settings import DecisionSettings, LockoutSettings, MatchSettings
from facelock_mqtt.tools.evaluate import image_files

ATTEMPTS = 2_000
IMAGES = 1_000
ENROLLED = 10


@pytest.fixture(scope="module")
def report(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("flood")
    return flood.flood(
        shared_data / "lfw_aligned_112", work, ATTEMPTS, enrolled=ENROLLED, max_images=IMAGES,
        modes=("no_lockout", "paced"),
    )  # fmt: skip


def test_the_flood_runs_at_the_default_settings(report: dict) -> None:
    defaults = {"match": MatchSettings(), "decision": DecisionSettings(), "lockout": LockoutSettings()}
    assert report["settings"] == {name: s.model_dump() for name, s in defaults.items()}
    assert report["threshold_far"] <= MatchSettings().target_far
    assert report["images_embedded"] <= IMAGES and report["impostor_identities"] > 400
    assert report["attempts"] == ATTEMPTS and len(report["enrolled"]) == ENROLLED
    print("\n" + flood.summary(report))


def test_the_recognizer_alone_lets_no_impostor_in(report: dict) -> None:
    run = report["runs"]["no_lockout"]
    assert run["evaluated"] == ATTEMPTS and run["frames_matched"] >= ATTEMPTS * DecisionSettings().k
    assert run["unlocks"] == 0 and run["denied"] == ATTEMPTS


def test_lockout_engages_and_refuses_most_attempts(report: dict) -> None:
    run = report["runs"]["paced"]
    assert run["unlocks"] == 0
    assert run["lockouts"] >= 5 and run["highest_lockout_level"] >= 5  # lockouts grew longer
    assert run["evaluated"] + run["refused_by_lockout"] == ATTEMPTS
    assert run["refused_by_lockout"] > 10 * run["evaluated"]
    # The first lockout comes after exactly max_failures failed attempts.
    assert run["evaluated"] >= LockoutSettings().max_failures


def test_the_same_path_does_let_enrolled_people_in(report: dict, shared_data: Path, tmp_path_factory) -> None:
    """0 unlocks means something only if this harness can unlock: genuine attempts, built from
    enrolled people's other photos, go through the same matcher and decision and are recognised."""
    files = image_files(shared_data / "lfw_aligned_112")
    enrolled = {path.split("/")[0] for paths in report["enrolled"].values() for path in paths}
    genuine = [(label, p) for label, p in files if label in enrolled]
    bundle = default_bundle(tmp_path_factory.mktemp("data"))
    faces = flood.embed_faces(genuine, bundle, tmp_path_factory.mktemp("cache"), threads=2)
    rows = faces.rows()
    templates = {person: [faces.paths.index(p) for p in paths] for person, paths in report["enrolled"].items()}
    matcher = flood.matcher_for(faces, templates, bundle, MatchSettings())
    outcomes = []
    for person, used in templates.items():
        others = [r for r in rows[person] if r not in used]
        if others:
            frames = (others * DecisionSettings().n)[: DecisionSettings().n]
            decision, _ = flood.run_attempt(matcher, faces.embeddings[frames], DecisionSettings(), 0.0)
            outcomes.append((decision.outcome, decision.person == person))
    print(f"\ngenuine attempts recognised: {sum(o == ('recognized', True) for o in outcomes)} of {len(outcomes)}")
    assert len(outcomes) >= 5, "too few enrolled people with spare photos"
    assert sum(o == ("recognized", True) for o in outcomes) >= len(outcomes) // 2, outcomes
