"""The gallery: enrolled people, their aligned face crops and templates, in SQLite (WAL).

Each template is tagged with the fingerprint of the bundle that computed it. The aligned crops
are kept so that templates can be recomputed when the served bundle changes; an enrollment is a
single transaction, so a crash never leaves half a person.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import GalleryError
from .files import StorageError, secure_file

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    crop BLOB NOT NULL,
    source TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS templates (
    sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (sample_id, fingerprint)
);
-- Templates an owner reported ("that was not me") wait here for review. Not part of the
-- content digest: a flag cannot change who the door opens for, and old galleries keep their digest.
-- The audit record of a change, written in the change's own transaction and deleted once the
-- audit trail has it: a crash between the two is replayed at the next start (not digested).
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    sample_id INTEGER PRIMARY KEY REFERENCES samples(id) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Sample:
    crop: np.ndarray  # aligned 112x112 BGR
    embedding: np.ndarray
    source: str


@dataclass(frozen=True)
class Person:
    name: str
    samples: int
    created: float


def _png(crop: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", crop)  # lossless: recomputed templates must be exact
    if not ok:
        raise GalleryError("could not encode a face crop")
    return data.tobytes()


class Gallery:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            secure_file(self.path)  # owner-only before SQLite writes a byte (its -wal/-shm follow)
        except StorageError as exc:
            raise GalleryError(f"gallery {self.path} is unsafe: {exc}") from exc
        try:
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise GalleryError(f"gallery {self.path} is corrupt: {'; '.join(problems[:3])}")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"gallery {self.path} cannot be opened: {exc}") from exc
        self._intent: dict | None = None
        # One connection serves the door threads and the panel's worker: a read from another
        # thread inside an open transaction would see its uncommitted rows (a template that a
        # failed enrollment rolls back), so transactions and the matcher's read are serialised.
        self._lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    def data_version(self) -> int:
        """Changes whenever another connection (e.g. `facelock enroll`) commits a change."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def content_digest(self) -> str:
        """SHA-256 over every person, crop and template: what the audit trail vouches for."""
        digest = hashlib.sha256()
        queries = (
            "SELECT id, name, created FROM people ORDER BY id",
            "SELECT id, person_id, crop, source, created FROM samples ORDER BY id",
            "SELECT sample_id, fingerprint, vector FROM templates ORDER BY sample_id, fingerprint",
        )
        for query in queries:
            for row in self.db.execute(query):
                for value in row:
                    data = value if isinstance(value, bytes) else repr(value).encode()
                    digest.update(len(data).to_bytes(8, "big") + data)
        return digest.hexdigest()

    @contextmanager
    def journaled(self, intent: dict) -> Iterator[None]:
        """Changes made inside also write `intent` (plus the digest after the change) to the
        journal, in their own transaction: the audit record commits with the change."""
        self._intent = intent
        try:
            yield
        finally:
            self._intent = None

    def journal(self) -> list[tuple[int, dict]]:
        """Audit records of committed changes that the audit trail may not have yet."""
        return [(i, json.loads(record)) for i, record in self.db.execute("SELECT id, record FROM journal ORDER BY id")]

    def forget(self, entry_id: int) -> None:
        """Drop a journal entry once the audit trail holds its record."""
        self.db.execute("DELETE FROM journal WHERE id = ?", (entry_id,))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield from self._transaction_locked()

    def _transaction_locked(self) -> Iterator[sqlite3.Connection]:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise GalleryError(f"gallery {self.path} is busy or not writable: {exc}") from exc
        try:
            before = self.db.total_changes
            yield self.db
            if self._intent is not None and self.db.total_changes != before:
                record = {**self._intent, "digest": self.content_digest()}  # sees this transaction
                self.db.execute("INSERT INTO journal (record) VALUES (?)", (json.dumps(record),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def add(self, name: str, samples: list[Sample], fingerprint: str) -> int:
        """Add samples (and their templates) to a person, creating the person; all or nothing."""
        if not samples:
            raise GalleryError("nothing to enroll")
        now = time.time()
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO people (name, created) VALUES (?, ?)", (name, now))
            person_id = db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()[0]
            for sample in samples:
                cursor = db.execute(
                    "INSERT INTO samples (person_id, crop, source, created) VALUES (?, ?, ?, ?)",
                    (person_id, _png(sample.crop), sample.source, now),
                )
                db.execute(
                    "INSERT INTO templates (sample_id, fingerprint, vector) VALUES (?, ?, ?)",
                    (cursor.lastrowid, fingerprint, sample.embedding.astype(np.float32).tobytes()),
                )
        return len(samples)

    def remove(self, name: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM people WHERE name = ?", (name,)).rowcount > 0

    def people(self) -> list[Person]:
        rows = self.db.execute(
            "SELECT p.name, COUNT(s.id), p.created FROM people p LEFT JOIN samples s ON s.person_id = p.id "
            "GROUP BY p.id ORDER BY p.name"
        )
        return [Person(name, count, created) for name, count, created in rows]

    def templates(self, fingerprint: str) -> tuple[np.ndarray, list[str]]:
        """All templates for `fingerprint` as an (N, D) matrix and the person of each row."""
        with self._lock:
            rows = self.db.execute(
                "SELECT p.name, t.vector FROM templates t JOIN samples s ON s.id = t.sample_id "
                "JOIN people p ON p.id = s.person_id WHERE t.fingerprint = ? ORDER BY t.sample_id",
                (fingerprint,),
            ).fetchall()
        if not rows:
            return np.zeros((0, 0), np.float32), []
        return np.stack([np.frombuffer(v, np.float32) for _, v in rows]), [n for n, _ in rows]

    def missing_templates(self, fingerprint: str) -> list[tuple[int, np.ndarray]]:
        rows = self.db.execute(
            "SELECT s.id, s.crop FROM samples s WHERE NOT EXISTS "
            "(SELECT 1 FROM templates t WHERE t.sample_id = s.id AND t.fingerprint = ?)",
            (fingerprint,),
        ).fetchall()
        return [(sid, cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)) for sid, png in rows]

    def sync(self, fingerprint: str, embed: Callable[[list[np.ndarray]], np.ndarray]) -> int:
        """Compute templates for the served bundle from the stored crops; returns how many."""
        missing = self.missing_templates(fingerprint)
        if not missing:
            return 0
        log.info("re-computing %d templates for bundle %s", len(missing), fingerprint)
        vectors = embed([crop for _, crop in missing])
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO templates (sample_id, fingerprint, vector) VALUES (?, ?, ?)",
                [(sid, fingerprint, vec.astype(np.float32).tobytes()) for (sid, _), vec in zip(missing, vectors)],
            )
        return len(missing)


@dataclass(frozen=True)
class TemplateInfo:
    """One enrolled sample as the owner's panel lists it."""

    id: int
    person: str
    source: str
    created: float
    models: tuple[str, ...]  # fingerprints of the bundles with a template for it
    review: str | None  # why it was marked for review, None when not marked


def _template_infos(db: sqlite3.Connection, where: str, args: tuple) -> list[TemplateInfo]:
    rows = db.execute(
        "SELECT s.id, p.name, s.source, s.created, r.reason, "
        "(SELECT group_concat(t.fingerprint) FROM templates t WHERE t.sample_id = s.id) "
        f"FROM samples s JOIN people p ON p.id = s.person_id LEFT JOIN reviews r ON r.sample_id = s.id {where} "
        "ORDER BY s.id",
        args,
    ).fetchall()
    return [
        TemplateInfo(sid, name, source, created, tuple(sorted((models or "").split(",")) if models else ()), reason)
        for sid, name, source, created, reason, models in rows
    ]


class GalleryEditor:
    """Panel edits of a gallery: list templates and crops, remove one template, rename, review flags.

    Kept apart from `Gallery` so its core (add/remove/templates/sync) stays small; each write is
    one transaction, like every other gallery change.
    """

    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def template_infos(self, person: str | None = None) -> list[TemplateInfo]:
        if person is None:
            return _template_infos(self.gallery.db, "", ())
        return _template_infos(self.gallery.db, "WHERE p.name = ?", (person,))

    def template_info(self, sample_id: int) -> TemplateInfo | None:
        found = _template_infos(self.gallery.db, "WHERE s.id = ?", (sample_id,))
        return found[0] if found else None

    def crop_png(self, sample_id: int) -> bytes | None:
        row = self.gallery.db.execute("SELECT crop FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def remove_template(self, sample_id: int) -> str | None:
        """Remove one sample and its templates; a person left without any goes too. Returns the person."""
        with self.gallery._transaction() as db:
            row = db.execute(
                "SELECT p.id, p.name FROM samples s JOIN people p ON p.id = s.person_id WHERE s.id = ?", (sample_id,)
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM samples WHERE id = ?", (sample_id,))
            db.execute(
                "DELETE FROM people WHERE id = ? AND NOT EXISTS (SELECT 1 FROM samples WHERE person_id = ?)",
                (row[0], row[0]),
            )
            return row[1]

    def rename(self, old: str, new: str) -> bool:
        """Rename a person; False when there is no `old`; GalleryError when `new` is taken."""
        with self.gallery._transaction() as db:
            if db.execute("SELECT 1 FROM people WHERE name = ?", (new,)).fetchone():
                raise GalleryError(f"{new!r} is already enrolled; remove or rename that person first")
            return db.execute("UPDATE people SET name = ? WHERE name = ?", (new, old)).rowcount > 0

    def mark_review(self, sample_ids: list[int], reason: str) -> int:
        with self.gallery._transaction() as db:
            now = time.time()
            db.executemany(
                "INSERT OR REPLACE INTO reviews (sample_id, reason, created) "
                "SELECT id, ?, ? FROM samples WHERE id = ?",
                [(reason, now, sid) for sid in sample_ids],
            )
        return len(sample_ids)

    def clear_review(self, sample_id: int) -> bool:
        with self.gallery._transaction() as db:
            return db.execute("DELETE FROM reviews WHERE sample_id = ?", (sample_id,)).rowcount > 0

    def template_vectors(self, person: str, fingerprint: str) -> list[tuple[int, np.ndarray]]:
        """(sample id, template) of one person for one bundle."""
        rows = self.gallery.db.execute(
            "SELECT s.id, t.vector FROM templates t JOIN samples s ON s.id = t.sample_id "
            "JOIN people p ON p.id = s.person_id WHERE p.name = ? AND t.fingerprint = ? ORDER BY s.id",
            (person, fingerprint),
        ).fetchall()
        return [(sid, np.frombuffer(vector, np.float32)) for sid, vector in rows]
