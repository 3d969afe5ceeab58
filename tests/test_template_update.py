"""Guarded template updates and template aging (issue 13) with real faces (NUAA webcam frames):
a genuine recent unlock may add an adaptive template; an impostor's frames never are added, not
even when a poisoned adaptive template already makes them match; the adaptive set is capped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from service_helpers import enroll, nuaa_frames, replay, service_settings, write_clip

from facelock_mqtt.cli import recognizer
from facelock_mqtt.guards.liveness import load_operating_point
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.pipeline.quality import frontal_rank
from facelock_mqtt.recognizer import ADAPTIVE_SOURCE, LIVENESS_MARGIN, MAX_ADAPTIVE, Recognizer
from facelock_mqtt.settings import LivenessSettings, MatchSettings, load_settings
from facelock_mqtt.storage.gallery import Sample

PERSON = "s0001"
K = 2
LIVE = load_operating_point().threshold


@pytest.fixture
def rec(tmp_path: Path, shared_data: Path) -> Recognizer:
    rec = recognizer(load_settings(data_dir=tmp_path / "data"))
    images = [(str(p), read_image(p)) for p in nuaa_frames(shared_data, PERSON, "01")[:3]]
    assert rec.enroll(PERSON, images) == 3
    yield rec
    rec.close()


def attempt(rec: Recognizer, paths: list[Path]) -> list[tuple[np.ndarray, object]]:
    """(image, face) pairs as the door keeps them for an attempt."""
    frames = []
    for path in paths:
        image = read_image(path)
        faces = rec.engine.faces(image)
        if faces:
            frames.append((image, max(faces, key=frontal_rank)))
    return frames


def templates(rec: Recognizer) -> list[str]:
    return [t.source for t in rec.editor.template_infos(PERSON)]


def test_a_genuine_live_unlock_adds_one_adaptive_template(rec, shared_data):
    frames = attempt(rec, nuaa_frames(shared_data, PERSON, "02")[:6])
    update = rec.guarded_update(PERSON, frames, liveness_score=LIVE + 0.2, liveness_threshold=LIVE, k=K)
    assert update.added, update.reason
    assert sum(s.startswith(ADAPTIVE_SOURCE) for s in templates(rec)) == 1 and len(templates(rec)) == 4
    assert PERSON in rec.matcher.people  # the new template serves at once


@pytest.mark.parametrize("score", [None, LIVE, LIVE + 0.05], ids=["no-liveness", "at-threshold", "small-margin"])
def test_no_update_without_liveness_passed_with_margin(rec, shared_data, score):
    frames = attempt(rec, nuaa_frames(shared_data, PERSON, "02")[:6])
    update = rec.guarded_update(PERSON, frames, liveness_score=score, liveness_threshold=LIVE, k=K)
    assert not update.added and "liveness" in update.reason
    assert len(templates(rec)) == 3


def test_an_impostors_frames_are_never_added(rec, shared_data):
    before = templates(rec)
    others = sorted(p.name for p in (shared_data / "nuaa" / "live").iterdir() if p.name != PERSON)
    for identity in others:
        for session in ("01", "02"):
            frames = attempt(rec, nuaa_frames(shared_data, identity, session))
            update = rec.guarded_update(PERSON, frames, liveness_score=1.0, liveness_threshold=LIVE, k=1)
            assert not update.added, (identity, session, update.reason)
    assert templates(rec) == before


def test_a_poisoned_adaptive_template_cannot_pull_in_more_of_the_impostor(rec, shared_data):
    """Even if one adaptive template of another face got in, it never vouches for the next."""
    impostor = attempt(rec, nuaa_frames(shared_data, "s0004", "01"))
    image, face = impostor[0]
    poison = rec.engine.analyze_faces(image, [face])
    with rec._change("test: a poisoned adaptive template", PERSON):
        rec.gallery.add(PERSON, [Sample(poison.crop, poison.embedding, ADAPTIVE_SOURCE + "poison")], rec.fingerprint)
    assert rec.matcher.match(poison.embedding, poison.quality).person == PERSON  # the poison makes the impostor match...
    update = rec.guarded_update(PERSON, impostor[1:], liveness_score=1.0, liveness_threshold=LIVE, k=K)
    assert not update.added  # ...but the originals refuse every one of their frames
    assert "original enrollment" in update.reason, update.reason
    assert sum(s.startswith(ADAPTIVE_SOURCE) for s in templates(rec)) == 1


def test_adaptive_templates_are_capped_and_enrollment_templates_stay(rec, shared_data):
    session = nuaa_frames(shared_data, PERSON, "02")
    added = 0
    for start in range(0, len(session) - 2, 2):
        frames = attempt(rec, session[start : start + 3])
        added += rec.guarded_update(PERSON, frames, liveness_score=1.0, liveness_threshold=LIVE, k=K).added
    assert added > MAX_ADAPTIVE, "too few genuine updates passed to exercise the cap"
    sources = templates(rec)
    assert sum(s.startswith(ADAPTIVE_SOURCE) for s in sources) == MAX_ADAPTIVE
    assert sum(not s.startswith(ADAPTIVE_SOURCE) for s in sources) == 3


def test_template_aging_flags_steadily_falling_genuine_scores_only(rec):
    rng = np.random.default_rng(13)
    for score in np.linspace(0.78, 0.62, 20) + rng.normal(0, 0.01, 20):
        rec.audit.append("recognized", camera="front", person=PERSON, details={"score": round(float(score), 4)})
    for score in 0.7 + rng.normal(0, 0.03, 20):
        # not enrolled (removed since): not reported
        rec.audit.append("recognized", camera="front", person="ghost", details={"score": round(float(score), 4)})
    aging = {a.person: a for a in rec.template_aging()}
    assert set(aging) == {PERSON}
    assert aging[PERSON].flagged and aging[PERSON].drop > 0.1, aging[PERSON]


def test_template_aging_does_not_flag_noisy_but_level_scores(rec):
    rng = np.random.default_rng(5)
    for score in 0.7 + rng.normal(0, 0.04, 30):
        rec.audit.append("recognized", camera="front", person=PERSON, details={"score": round(float(score), 4)})
    (aging,) = rec.template_aging()
    assert aging.unlocks == 30 and not aging.flagged, aging


def test_the_door_adds_an_adaptive_template_after_a_live_unlock_only(tmp_path, shared_data, mosquitto, liveness_models):
    """Through the real service with liveness installed: s0001 in person unlocks and leaves one
    adaptive template; s0004 in front of the same door is denied and adds nothing."""
    settings = service_settings(tmp_path, mosquitto).model_copy(
        update={"liveness": LivenessSettings(models=liveness_models), "match": MatchSettings(adaptive_templates=True)}
    )
    enroll(settings, shared_data, PERSON, "01")
    events = replay(settings, write_clip(nuaa_frames(shared_data, "s0004", "02"), tmp_path / "impostor.avi"), {})
    assert not any(e["event_type"] == "recognized" for e in events), events
    events = replay(settings, write_clip(nuaa_frames(shared_data, PERSON, "02"), tmp_path / "live.avi"), {})
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized, events
    check = recognizer(settings)
    try:
        sources = [t.source for t in check.editor.template_infos()]
        people = {t.person for t in check.editor.template_infos() if t.source.startswith(ADAPTIVE_SOURCE)}
    finally:
        check.close()
    assert recognized[0]["liveness"] >= LIVE + LIVENESS_MARGIN, recognized  # this clip passes with margin
    assert sources.count("adaptive:front") == 1 and len(sources) == 4, sources
    assert people <= {PERSON}
