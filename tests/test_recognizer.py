"""Enrollment cannot merge people: real photos of real people, the real models, the audit trail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facelock_mqtt.errors import EnrollmentError
from facelock_mqtt.guards.audit import AuditLog, list_records
from facelock_mqtt.guards.integrity import GALLERY_EVENT
from facelock_mqtt.models.bundle import Bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.recognizer import Recognizer
from facelock_mqtt.settings import AuditSettings, MatchSettings, ModelSettings, QualitySettings

ALICE = ["person01/img1.jpg", "person01/img2.jpg"]
ALICE_MORE = "person01/img4.jpg"
BOB = "person03/img47.jpg"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture
def recognizer(tmp_path: Path, bundle: Bundle) -> Iterator[Recognizer]:
    audit = AuditLog(tmp_path / "audit.sqlite3", AuditSettings())
    rec = Recognizer(tmp_path, ModelSettings(threads=2), QualitySettings(), MatchSettings(), bundle=bundle, audit=audit)
    yield rec
    rec.close()


def photo(shared_data: Path, name: str) -> tuple[str, np.ndarray]:
    return name, read_image(shared_data / "deepface" / name)


def people(rec: Recognizer) -> list[tuple[str, int]]:
    return [(p.name, p.samples) for p in rec.gallery.people()]


def test_someone_elses_photo_is_not_added_to_a_person(recognizer: Recognizer, shared_data: Path) -> None:
    recognizer.enroll("alice", [photo(shared_data, f) for f in ALICE])
    with pytest.raises(EnrollmentError, match=r"does not match alice's enrolled photos \(best score 0\.\d+ <= threshold"):
        recognizer.enroll("alice", [photo(shared_data, BOB)])
    assert people(recognizer) == [("alice", 2)]
    recognizer.enroll("alice", [photo(shared_data, ALICE_MORE)])  # her own third photo is fine
    assert people(recognizer) == [("alice", 3)]


def test_an_enrolled_face_under_a_new_name_is_refused_with_the_name_and_score(
    recognizer: Recognizer, shared_data: Path
) -> None:
    recognizer.enroll("alice", [photo(shared_data, f) for f in ALICE])
    with pytest.raises(EnrollmentError, match=r"matches another person \(alice, score 0\.\d{3}\)") as refused:
        recognizer.enroll("mallory", [photo(shared_data, ALICE_MORE)])
    assert "nothing written" in str(refused.value)
    assert people(recognizer) == [("alice", 2)]


def test_one_enrollment_of_two_people_is_refused(recognizer: Recognizer, shared_data: Path) -> None:
    with pytest.raises(EnrollmentError, match="matches none of the other photos"):
        recognizer.enroll("alice", [photo(shared_data, ALICE[0]), photo(shared_data, BOB)])
    assert people(recognizer) == []


def test_force_overrides_the_merge_check_and_the_audit_trail_says_so(
    recognizer: Recognizer, shared_data: Path, tmp_path: Path
) -> None:
    recognizer.enroll("alice", [photo(shared_data, f) for f in ALICE])
    assert recognizer.enroll("alice", [photo(shared_data, BOB)], force=True) == 1
    assert people(recognizer) == [("alice", 3)]
    actions = [r.details["action"] for r in list_records(tmp_path / "audit.sqlite3", event_type=GALLERY_EVENT)]
    assert any("forced past the merge check" in a for a in actions), actions


def test_the_panel_verdicts_say_which_photo_of_a_batch_shows_someone_else(recognizer: Recognizer, shared_data: Path):
    verdicts = recognizer.photo_verdicts("alice", [photo(shared_data, ALICE[0]), photo(shared_data, BOB)])
    assert [v.source for v in verdicts] == [ALICE[0], BOB]
    assert all(v.refused is not None and "matches none of the other photos" in v.refused for v in verdicts)
    alone = recognizer.photo_verdicts("alice", [photo(shared_data, f) for f in ALICE])
    assert [v.refused for v in alone] == [None, None]


def test_verify_embeds_both_faces_in_one_run_with_the_scores_of_two(recognizer: Recognizer, shared_data: Path) -> None:
    """verify runs the two faces as one batch of 2; each vector is the one a run of its own gives."""
    _, first = photo(shared_data, ALICE[0])
    _, second = photo(shared_data, BOB)
    runs: list[int] = []
    embedder = recognizer.engine.embedder
    embedder.session = _CountingSession(embedder.session, runs)
    try:
        score, threshold = recognizer.verify(first, second)
    finally:
        embedder.session = embedder.session.inner
    assert runs == [2]  # one run, both faces
    alone = [recognizer.engine.analyze(image, embed_poor=True).embedding for image in (first, second)]
    assert score == pytest.approx(float(alone[0] @ alone[1]), abs=1e-5)
    assert score < threshold  # Alice and Bob are different people


class _CountingSession:
    """The real onnxruntime session, recording the batch size of every run."""

    def __init__(self, inner, runs: list[int]) -> None:
        self.inner, self.runs = inner, runs

    def run(self, outputs, feeds):
        self.runs.append(next(iter(feeds.values())).shape[0])
        return self.inner.run(outputs, feeds)

    def get_inputs(self):
        return self.inner.get_inputs()
