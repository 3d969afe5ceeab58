"""Gallery integrity: changes made outside FaceLock are detected and refused; FaceLock's own
changes (also from another process) are picked up by a running recognizer."""

from __future__ import annotations

import sqlite3
import stat

import numpy as np
import pytest
from service_helpers import nuaa_frames

from facelock_mqtt.cli import recognizer
from facelock_mqtt.errors import GalleryError
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings(data_dir=tmp_path / "data")


def enroll(settings, shared_data, identity: str, session: str = "01") -> None:
    rec = recognizer(settings)
    frames = nuaa_frames(shared_data, identity, session)[:2]
    rec.enroll(identity, [(str(p), read_image(p)) for p in frames])
    rec.close()


def test_gallery_files_are_owner_only(settings, shared_data):
    enroll(settings, shared_data, "s0001")
    for name in ("gallery.db", "audit.sqlite3"):
        mode = stat.S_IMODE((settings.data_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE templates SET vector = zeroblob(length(vector))",  # swap in another face's vector
        "INSERT INTO people (name, created) VALUES ('mallory', 0)",
        "DELETE FROM samples WHERE id = (SELECT MIN(id) FROM samples)",
        "UPDATE people SET name = 'mallory'",
    ],
)
def test_gallery_changed_behind_facelock_is_refused(settings, shared_data, tamper):
    enroll(settings, shared_data, "s0001")
    with sqlite3.connect(settings.data_dir / "gallery.db") as db:
        db.execute(tamper)
    with pytest.raises(GalleryError, match="changed outside FaceLock"):
        recognizer(settings)


def test_accepting_a_restored_gallery_vouches_for_it(settings, shared_data):
    enroll(settings, shared_data, "s0001")
    (settings.data_dir / "audit.sqlite3").unlink()  # the trail is gone: nothing vouches for the gallery
    with pytest.raises(GalleryError, match="vouches for none"):
        recognizer(settings)
    rec = recognizer(settings, accept_gallery=True)
    assert [p.name for p in rec.gallery.people()] == ["s0001"]
    rec.close()
    recognizer(settings).close()  # accepted once, trusted afterwards


def test_running_recognizer_sees_enrollment_from_another_process(settings, shared_data):
    enroll(settings, shared_data, "s0001")
    running = recognizer(settings)
    assert running.matcher.names == ["s0001"]
    enroll(settings, shared_data, "s0004")  # as `facelock enroll` would, on its own connection
    assert running.matcher.names == ["s0001", "s0004"]
    probe = read_image(nuaa_frames(shared_data, "s0004", "02")[0])
    found = running.identify(probe)
    assert found.match is not None and found.match.accepted and found.match.person == "s0004"


def test_running_recognizer_refuses_a_gallery_tampered_under_it(settings, shared_data):
    enroll(settings, shared_data, "s0001")
    running = recognizer(settings)
    assert running.matcher.names == ["s0001"]
    with sqlite3.connect(settings.data_dir / "gallery.db") as db:
        vector = np.frombuffer(db.execute("SELECT vector FROM templates LIMIT 1").fetchone()[0], np.float32)
        db.execute("UPDATE templates SET vector = ?", ((-vector).tobytes(),))
    with pytest.raises(GalleryError):
        running.matcher
