"""The gallery through the Recognizer: round trip, refusals, re-computed templates, crash safety."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelock_mqtt.errors import EnrollmentError, GalleryError
from facelock_mqtt.models.bundle import Bundle, load_bundle
from facelock_mqtt.models.default_bundle import default_bundle
from facelock_mqtt.pipeline.embed import Embedder
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.recognizer import GALLERY_FILE, Recognizer
from facelock_mqtt.settings import MatchSettings, ModelSettings, QualitySettings
from facelock_mqtt.storage.gallery import Gallery

ENROL = {"alice": ["person01/img1.jpg", "person01/img2.jpg"], "bob": ["person03/img47.jpg", "person03/img48.jpg"]}
PROBE = {"alice": "person01/img10.jpg", "bob": "person03/img8.jpg"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return default_bundle(tmp_path_factory.mktemp("data"))


@pytest.fixture
def deepface(shared_data: Path) -> Path:
    return shared_data / "deepface"


def open_recognizer(data_dir: Path, bundle: Bundle) -> Recognizer:
    return Recognizer(data_dir, ModelSettings(threads=2), QualitySettings(), MatchSettings(), bundle=bundle)


@pytest.fixture
def recognizer(tmp_path: Path, bundle: Bundle) -> Iterator[Recognizer]:
    rec = open_recognizer(tmp_path, bundle)
    yield rec
    rec.close()


def photos(folder: Path, names: list[str]) -> list[tuple[str, np.ndarray]]:
    return [(name, read_image(folder / name)) for name in names]


def row_counts(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("people", "samples", "templates")}


def test_round_trip(recognizer: Recognizer, deepface: Path, tmp_path: Path, bundle: Bundle) -> None:
    for name, files in ENROL.items():
        assert recognizer.enroll(name, photos(deepface, files)) == 2
    assert [(p.name, p.samples) for p in recognizer.gallery.people()] == [("alice", 2), ("bob", 2)]
    for name, probe in PROBE.items():
        found = recognizer.identify(read_image(deepface / probe))
        assert found.reason == "match" and found.match is not None
        assert found.match.person == name and found.match.accepted
        # The probe's quality band's threshold, which is never below the globally calibrated one.
        thresholds = bundle.band_thresholds(MatchSettings().target_far)
        quality = found.result.quality
        assert (found.match.band, found.match.threshold) == thresholds.for_probe(quality.size_px, quality.blur)
        assert found.match.threshold >= bundle.threshold_for(MatchSettings().target_far).threshold
        assert found.match.margin is not None and found.match.margin > 0.3
    recognizer.close()

    reopened = open_recognizer(tmp_path, bundle)  # persisted, nothing to recompute
    assert reopened.gallery.sync(reopened.fingerprint, reopened.engine.embed_aligned) == 0
    assert reopened.remove("alice") and not reopened.remove("alice")
    assert [p.name for p in reopened.gallery.people()] == ["bob"]
    gone = reopened.identify(read_image(deepface / PROBE["alice"]))
    assert gone.match is not None and not gone.match.accepted
    assert reopened.identify(read_image(deepface / PROBE["bob"])).match.person == "bob"
    assert row_counts(tmp_path / GALLERY_FILE) == {"people": 1, "samples": 2, "templates": 2}  # cascade
    reopened.close()


def test_enrolling_more_photos_adds_to_a_person(recognizer: Recognizer, deepface: Path) -> None:
    recognizer.enroll("alice", photos(deepface, ENROL["alice"][:1]))
    recognizer.enroll("alice", photos(deepface, ENROL["alice"][1:]))
    assert [(p.name, p.samples) for p in recognizer.gallery.people()] == [("alice", 2)]


def test_empty_gallery_identifies_nobody(recognizer: Recognizer, deepface: Path) -> None:
    found = recognizer.identify(read_image(deepface / PROBE["alice"]))
    assert found.reason == "nobody enrolled" and not found.match.accepted


def blurred(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), 0.02 * max(image.shape[:2]))


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: np.zeros((480, 640, 3), np.uint8), "no face found"),
        (lambda d: read_image(d / "scenes/couple.jpg"), "2 faces found; enroll from a photo of one person"),
        (lambda d: blurred(read_image(d / "person01/img2.jpg")), "poor quality: too blurred"),
        (
            lambda d: cv2.resize(read_image(d / "person01/img2.jpg"), None, fx=0.08, fy=0.08),
            "poor quality: face too small",
        ),
    ],
    ids=["no-face", "two-faces", "blurred", "tiny"],
)
def test_refused_enrollment_says_why_and_writes_nothing(
    recognizer: Recognizer, deepface: Path, make, reason: str
) -> None:
    good = photos(deepface, ENROL["alice"])
    with pytest.raises(EnrollmentError, match=reason) as refused:
        recognizer.enroll("alice", [*good, ("bad.jpg", make(deepface))])  # good photos do not save it
    assert "nothing written" in str(refused.value) and "bad.jpg" in str(refused.value)
    assert recognizer.gallery.people() == []
    assert row_counts(recognizer.gallery.path) == {"people": 0, "samples": 0, "templates": 0}


def test_blank_name_is_refused(recognizer: Recognizer, deepface: Path) -> None:
    with pytest.raises(EnrollmentError, match="needs a name"):
        recognizer.enroll("  ", photos(deepface, ENROL["alice"]))
    assert recognizer.gallery.people() == []


def test_templates_are_recomputed_for_another_bundle(
    tmp_path: Path, bundle: Bundle, deepface: Path, shared_models: Path
) -> None:
    first = open_recognizer(tmp_path, bundle)
    for name, files in ENROL.items():
        first.enroll(name, photos(deepface, files))
    first.close()

    pack = load_bundle(shared_models / "pack_like")
    second = open_recognizer(tmp_path, pack)  # syncs on open
    assert second.fingerprint != first.fingerprint
    templates, people = second.gallery.templates(second.fingerprint)
    assert people == ["alice", "alice", "bob", "bob"] and templates.shape == (4, 128)
    assert second.gallery.missing_templates(second.fingerprint) == []
    # Exactly what the pack's embedder computes from the stored crops ...
    with sqlite3.connect(tmp_path / GALLERY_FILE) as db:
        pngs = [row[0] for row in db.execute("SELECT crop FROM samples ORDER BY id")]
    crops = [cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) for png in pngs]
    np.testing.assert_allclose(templates, Embedder(pack, threads=1).embed(crops), atol=1e-5)
    # ... and they recognise a new photo embedded by the pack's own detector and embedder.
    probe = second.engine.analyze(read_image(deepface / PROBE["bob"])).embedding
    scores = templates @ probe
    assert scores[2:].min() > scores[:2].max() + 0.3
    second.close()
    # The first bundle's templates were kept: switching back recomputes nothing.
    again = open_recognizer(tmp_path, bundle)
    assert again.gallery.missing_templates(again.fingerprint) == []
    assert row_counts(tmp_path / GALLERY_FILE)["templates"] == 8
    again.close()


def test_corrupt_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / GALLERY_FILE
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    with pytest.raises(GalleryError, match=str(path)):
        Gallery(path)


def test_busy_gallery_is_a_clear_error_and_writes_nothing(recognizer: Recognizer, deepface: Path) -> None:
    recognizer.gallery.db.execute("PRAGMA busy_timeout = 200")  # the service waits 30 s; a test need not
    other = sqlite3.connect(recognizer.gallery.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process is writing
    with pytest.raises(GalleryError, match="busy or not writable"):
        recognizer.enroll("alice", photos(deepface, ENROL["alice"]))
    other.execute("ROLLBACK")
    other.close()
    assert recognizer.gallery.people() == []
    assert recognizer.enroll("alice", photos(deepface, ENROL["alice"])) == 2  # free again


def test_adding_no_samples_is_refused(tmp_path: Path) -> None:
    gallery = Gallery(tmp_path / GALLERY_FILE)
    with pytest.raises(GalleryError, match="nothing to enroll"):
        gallery.add("alice", [], "fp")
    assert gallery.people() == []
    gallery.close()


# Enrolls people of three samples each in a loop, with removals, reporting each write to a log
# file before it starts and after it is committed (each line one write(2): it survives SIGKILL).
WORKER = """
import sys
from pathlib import Path
from facelock_mqtt.models.bundle import load_bundle
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.recognizer import Recognizer
from facelock_mqtt.settings import MatchSettings, ModelSettings, QualitySettings

data_dir, bundle_dir, prefix, log_path, *files = sys.argv[1:]
log = open(log_path, "w", buffering=1)
settings = ModelSettings(threads=1), QualitySettings(), MatchSettings()
rec = Recognizer(Path(data_dir), *settings, bundle=load_bundle(Path(bundle_dir)))
samples = [rec.enrollment_sample(read_image(f), f) for f in files]
print("ready", file=log)
for i in range(100000):
    print(f"begin add {prefix}-{i}", file=log)
    rec.gallery.add(f"{prefix}-{i}", samples, rec.fingerprint)
    print(f"done add {prefix}-{i}", file=log)
    if i % 4 == 3:
        print(f"begin remove {prefix}-{i - 2}", file=log)
        rec.remove(f"{prefix}-{i - 2}")
        print(f"done remove {prefix}-{i - 2}", file=log)
"""


def kill_during_enrollment(data_dir: Path, bundle: Bundle, prefix: str, files: list[Path], delay: float) -> list[str]:
    """Run the worker, SIGKILL it `delay` seconds into its loop, return the writes it reported."""
    log = data_dir / f"{prefix}.log"
    args = [sys.executable, "-c", WORKER, str(data_dir), str(bundle.path), prefix, str(log), *map(str, files)]
    worker = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().startswith("ready\n")):
        assert worker.poll() is None, worker.stderr.read()
        assert time.monotonic() < deadline, "the worker did not get ready"
        time.sleep(0.02)
    time.sleep(delay)
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    return log.read_text().splitlines()[1:]


def test_killed_enrollments_leave_a_consistent_database(tmp_path: Path, bundle: Bundle, deepface: Path) -> None:
    files = [deepface / f for f in ["person01/img1.jpg", "person01/img2.jpg", "person01/img10.jpg"]]
    chance = random.Random(20261125)
    expected: set[str] = set()  # people whose last reported write says they exist
    uncertain: set[str] = set()  # a write under way when the worker was killed may or may not be in
    for round_ in range(5):
        for line in kill_during_enrollment(tmp_path, bundle, f"r{round_}", files, chance.uniform(0.05, 0.8)):
            stage, verb, name = line.split()
            if stage == "begin":
                uncertain.add(name)
                continue
            uncertain.discard(name)
            (expected.add if verb == "add" else expected.discard)(name)
    assert len(uncertain) <= 5  # one write at most was under way per kill
    db = sqlite3.connect(tmp_path / GALLERY_FILE)
    db.execute("PRAGMA foreign_keys=ON")
    assert [row[0] for row in db.execute("PRAGMA integrity_check")] == ["ok"]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    names = {row[0] for row in db.execute("SELECT name FROM people")}
    print(f"{len(names)} people after 5 kills; {len(uncertain)} writes were under way when killed")
    assert len(names) >= 5  # every round got some enrollments done
    assert names ^ expected <= uncertain  # every committed write survived the kills, and nothing else
    # Never half a person: three samples each, one template per sample for the bundle.
    counts = db.execute(
        "SELECT p.name, COUNT(s.id) FROM people p LEFT JOIN samples s ON s.person_id = p.id GROUP BY p.id"
    ).fetchall()
    assert {count for _, count in counts} == {3}
    orphans = db.execute(
        "SELECT COUNT(*) FROM samples s WHERE NOT EXISTS (SELECT 1 FROM templates t WHERE t.sample_id = s.id)"
    ).fetchone()[0]
    assert orphans == 0
    assert db.execute("SELECT COUNT(DISTINCT fingerprint) FROM templates").fetchone()[0] == 1
    db.close()
    # And the service opens it and still recognises the person.
    rec = open_recognizer(tmp_path, bundle)
    assert rec.identify(read_image(deepface / "person01/img6.jpg")).match.person in names
    rec.close()
