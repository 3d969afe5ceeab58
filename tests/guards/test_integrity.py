"""Gallery integrity: changes made outside FaceLock are detected and refused; FaceLock's own
changes (also from another process) are picked up by a running recognizer."""

from __future__ import annotations

import signal
import sqlite3
import stat
import subprocess
import sys

import numpy as np
import pytest
from service_helpers import nuaa_frames

from facelock_mqtt.cli import recognizer
from facelock_mqtt.errors import GalleryError
from facelock_mqtt.guards.audit import list_records
from facelock_mqtt.guards.integrity import GALLERY_EVENT
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


KILLED_MID_CHANGE = """
import os, signal, sys
from pathlib import Path
from facelock_mqtt.cli import recognizer
from facelock_mqtt.guards.audit import AuditLog
from facelock_mqtt.pipeline.imageio import read_image
from facelock_mqtt.settings import load_settings

append = AuditLog.append
def append_then_die(self, event_type, *args, **kwargs):
    if event_type == "gallery_changed":
        os.kill(os.getpid(), signal.SIGKILL)  # the gallery has committed; its audit record never lands
    return append(self, event_type, *args, **kwargs)
AuditLog.append = append_then_die

rec = recognizer(load_settings(data_dir=sys.argv[1]))
rec.enroll("s0003", [(p, read_image(p)) for p in sys.argv[2:]])
"""


def test_a_crash_between_a_gallery_change_and_its_audit_record_does_not_lock_the_owner_out(settings, shared_data):
    """The change and its record commit together (the gallery's journal): the next start appends
    the record, the gallery is accepted, and the new person is there."""
    enroll(settings, shared_data, "s0001")
    frames = [str(p) for p in nuaa_frames(shared_data, "s0003", "01")[:2]]
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_CHANGE, str(settings.data_dir), *frames], timeout=120)
    assert killed.returncode == -signal.SIGKILL
    with sqlite3.connect(settings.data_dir / "gallery.db") as db:
        assert db.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == 1  # committed with the change
    rec = recognizer(settings)  # before the journal: GalleryError "changed outside FaceLock"
    try:
        assert [p.name for p in rec.gallery.people()] == ["s0001", "s0003"]
        last = list_records(settings.data_dir / "audit.sqlite3", event_type=GALLERY_EVENT, limit=1)[0]
        assert last.person == "s0003" and last.details["replayed"] is True
        assert last.details["digest"] == rec.gallery.content_digest() and rec.gallery.journal() == []
    finally:
        rec.close()


def test_a_journal_entry_cannot_vouch_for_a_different_gallery(settings, shared_data):
    """A stale or forged journal entry whose digest is not the gallery's is dropped, not trusted."""
    enroll(settings, shared_data, "s0001")
    with sqlite3.connect(settings.data_dir / "gallery.db") as db:
        db.execute("INSERT INTO people (name, created) VALUES ('mallory', 0)")
        db.execute("INSERT INTO journal (record) VALUES (?)", ('{"action": "enrolled", "digest": "0" }',))
    with pytest.raises(GalleryError, match="changed outside FaceLock"):
        recognizer(settings)
