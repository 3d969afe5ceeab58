"""Append-only audit trail of every decision, hash-chained so that tampering shows.

Store: one SQLite file in WAL mode. Appends are atomic transactions (a power cut never leaves the
half-written record that a JSON-lines file can, which `verify` would have to call tampering), the
service can append while `facelock audit list` reads, and retention is a DELETE of the oldest rows.

Chain: record i stores `hash_i = SHA-256(hash_{i-1} + "\\n" + body_i)`, where body_i is the
canonical JSON (sorted keys, no spaces) of {seq, ts, event_type, camera, person, details}. The
`meta` table keeps the anchor (first kept seq and the hash before it) and the head (last seq and
its hash), updated in the same transaction as each append or prune.

`verify` detects, naming the record: an edited field (its hash no longer matches), a deleted or
inserted record (seq gap, broken link), reordered records (seq inside the hash, broken links),
a truncated tail (head pointer ahead of the last record), a deleted head of the chain (anchor
without a matching `audit_pruned` record: pruning always writes one that names the new anchor).
It cannot detect a consistent rewrite by someone with write access to the file who recomputes
every hash after the change and the meta table: only a copy of the head hash kept elsewhere (a
"witness", e.g. published to Home Assistant's history) shows that; `verify(witness=...)` checks one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FaceLockError
from ..settings import AuditSettings
from ..storage.files import StorageError, secure_file

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.sqlite3"
PRUNED = "audit_pruned"
GENESIS = "0" * 64
_PRUNE_EVERY_S = 86400.0  # retention is in days

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, ts REAL NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AuditError(FaceLockError):
    """The audit trail cannot be opened, read or written."""


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    event_type: str
    camera: str | None
    person: str | None
    details: dict[str, Any]
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


UNOPENABLE = "unopenable"


@dataclass(frozen=True)
class AuditProblem:
    seq: int  # the record concerned (for a gap or a truncated tail: the first missing one)
    kind: str  # edited, missing, chain_break, out_of_order, truncated, anchor, witness, unreadable, unopenable
    detail: str


@dataclass(frozen=True)
class AuditReport:
    records: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str | None
    problems: tuple[AuditProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def checked(self) -> bool:
        """False when the trail could not be opened at all: nothing is known about it."""
        return not any(p.kind == UNOPENABLE for p in self.problems)

    def summary(self) -> str:
        if not self.checked:
            why = "; ".join(p.detail for p in self.problems)
            return (
                f"cannot open the audit trail ({why}): nothing was verified. A read-only data folder needs "
                "the trail's -wal and -shm files beside it (copy the whole folder), or a writable copy"
            )
        if self.ok:
            span = f"records {self.first_seq}..{self.last_seq}" if self.records else "no records"
            return f"audit trail intact: {self.records} {span}; head {self.head_hash}"
        lines = [f"audit trail TAMPERED or damaged: {len(self.problems)} problem(s)"]
        lines += [f"  record {p.seq}: {p.kind}: {p.detail}" for p in self.problems]
        return "\n".join(lines)


def canonical_json(value: Any) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


def _plain(value: Any) -> Any:
    """JSON-ready copy of a decision's details (numpy values included; NaN/inf kept as text)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise AuditError(f"cannot record a {type(value).__name__} in the audit trail")


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit trail {path}: {exc}") from exc


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _record(seq: int, body: str, hash_: str) -> AuditRecord:
    data = json.loads(body)
    return AuditRecord(
        seq, data["ts"], data["event_type"], data.get("camera"), data.get("person"), data.get("details", {}), hash_
    )


class AuditLog:
    """The service's writer: append decisions, prune by retention, report the head for a witness."""

    def __init__(self, path: Path | str, settings: AuditSettings, now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._settings = settings
        self._now = now
        self._lock = threading.Lock()
        try:
            secure_file(self.path)
        except StorageError as exc:
            raise AuditError(f"the audit trail {self.path} is unsafe: {exc}") from exc
        self._conn = _connect(self.path, readonly=False)
        try:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")  # decisions are rare; each one must survive
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES "
                f"('anchor_seq', '1'), ('anchor_hash', '{GENESIS}'), ('head_seq', '0'), ('head_hash', '{GENESIS}')"
            )
        except sqlite3.Error as exc:
            self._conn.close()
            raise AuditError(f"the audit trail {self.path} is not a usable SQLite database: {exc}") from exc
        self._last_prune = -math.inf
        self.write_error: str | None = None  # the last append's failure (a full disk), None once one works
        self.prune()

    def append(
        self,
        event_type: str,
        *,
        camera: str | None = None,
        person: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        """Add one record. Decision details to include: score, scores (per frame), threshold,
        target_far, margin, frames, matched_frames, liveness, quality, latency_ms, reasons."""
        with self._lock:
            if self._now() - self._last_prune >= _PRUNE_EVERY_S:
                try:
                    self._prune_locked()
                except AuditError as exc:  # the decision is still recorded; retention waits
                    log.error("%s", exc)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                record = self._insert(event_type, camera, person, dict(details or {}))
                self._conn.execute("COMMIT")
            except (sqlite3.Error, AuditError, ValueError) as exc:
                self._rollback()
                self.write_error = f"could not append to the audit trail {self.path}: {exc}"
                raise AuditError(self.write_error) from exc
            self.write_error = None
            return record

    def _insert(self, event_type: str, camera: str | None, person: str | None, details: dict) -> AuditRecord:
        """Chain one record onto the head, inside the caller's transaction."""
        ts = self._now()
        meta = _meta(self._conn)
        seq = int(meta["head_seq"]) + 1
        body = canonical_json(
            {"seq": seq, "ts": ts, "event_type": event_type, "camera": camera, "person": person, "details": details}
        )
        digest = chain_hash(meta["head_hash"], body)
        self._conn.execute(
            "INSERT INTO records (seq, ts, prev_hash, hash, body) VALUES (?, ?, ?, ?, ?)",
            (seq, ts, meta["head_hash"], digest, body),
        )
        self._conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(str(seq), "head_seq"), (digest, "head_hash")])
        return _record(seq, body, digest)

    def prune(self) -> int:
        """Delete records older than the retention; return how many. Keeps the chain verifiable."""
        with self._lock:
            return self._prune_locked()

    def _prune_locked(self) -> int:
        self._last_prune = self._now()
        days = self._settings.retention_days
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            # Only a leading run of old records goes, so the kept records stay one unbroken chain.
            newer = self._conn.execute(
                "SELECT MIN(seq) FROM records WHERE ts >= ?", (self._last_prune - days * 86400.0,)
            ).fetchone()[0]
            last_pruned, count = self._conn.execute(
                "SELECT MAX(seq), COUNT(*) FROM records WHERE seq < ?", (newer if newer is not None else 2**62,)
            ).fetchone()
            if not count:
                self._conn.execute("ROLLBACK")
                return 0
            anchor_hash = self._conn.execute("SELECT hash FROM records WHERE seq = ?", (last_pruned,)).fetchone()[0]
            self._conn.execute("DELETE FROM records WHERE seq <= ?", (last_pruned,))
            self._conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(str(last_pruned + 1), "anchor_seq"), (anchor_hash, "anchor_hash")],
            )
            # In the same transaction: a chain never starts later than its last prune record says.
            details = {"pruned": count, "anchor_seq": last_pruned + 1, "anchor_hash": anchor_hash, "retention_days": days}
            self._insert(PRUNED, None, None, details)
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise AuditError(f"could not prune the audit trail {self.path}: {exc}") from exc
        log.info("audit trail: pruned %d records older than %d days", count, days)
        return count

    def head(self) -> tuple[int, str]:
        """(last seq, its hash): publish or log it as a witness that a rewrite cannot match."""
        with self._lock:
            meta = _meta(self._conn)
        return int(meta["head_seq"]), meta["head_hash"]

    def records(self) -> list[AuditRecord]:
        """Every record of the open trail, oldest first (list_records() filters)."""
        with self._lock:
            return _list(self._conn, None, None, {})

    def verify(self, witness: tuple[int, str] | None = None) -> AuditReport:
        with self._lock:
            return _verify(self._conn, witness)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")


def list_records(
    path: Path | str,
    *,
    limit: int | None = None,
    since: float | None = None,
    camera: str | None = None,
    person: str | None = None,
    event_type: str | None = None,
) -> list[AuditRecord]:
    """Records of the trail at `path`, oldest first; `limit` keeps the newest ones."""
    wanted = {"camera": camera, "person": person, "event_type": event_type}
    with _open_readonly(Path(path)) as conn:
        return _list(conn, limit, since, wanted)


def verify(path: Path | str, witness: tuple[int, str] | None = None) -> AuditReport:
    """Check the whole chain of the trail at `path`; `witness` is a (seq, hash) kept elsewhere."""
    try:
        with _open_readonly(Path(path)) as conn:
            return _verify(conn, witness)
    except AuditError as exc:
        return AuditReport(0, None, None, None, (AuditProblem(0, "unreadable", str(exc)),))


@contextmanager
def _open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection that refuses to create a missing trail."""
    if not path.is_file():
        raise AuditError(f"no audit trail at {path}")
    conn = _connect(path, readonly=True)
    try:
        yield conn
    finally:
        conn.close()


def _list(
    conn: sqlite3.Connection, limit: int | None, since: float | None, wanted: dict[str, str | None]
) -> list[AuditRecord]:
    try:
        rows = conn.execute(
            "SELECT seq, body, hash FROM records WHERE ts >= ? ORDER BY seq", (since if since is not None else -1e300,)
        ).fetchall()
        records = [_record(*row) for row in rows]
    except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
        raise AuditError(f"cannot read the audit trail: {exc} (run `facelock audit verify`)") from exc
    records = [r for r in records if all(v is None or getattr(r, k) == v for k, v in wanted.items())]
    return records[-limit:] if limit else records


def _verify(conn: sqlite3.Connection, witness: tuple[int, str] | None) -> AuditReport:
    try:
        meta = _meta(conn)
        rows = conn.execute("SELECT seq, ts, prev_hash, hash, body FROM records ORDER BY seq").fetchall()
        anchor_seq, anchor_hash = int(meta["anchor_seq"]), meta["anchor_hash"]
        head_seq, head_hash = int(meta["head_seq"]), meta["head_hash"]
    except sqlite3.OperationalError as exc:
        # Could not even read (a read-only folder without the WAL's -shm file, a lock, a
        # permission): nothing was checked, which is not evidence of tampering.
        return AuditReport(0, None, None, None, (AuditProblem(0, UNOPENABLE, f"{exc}"),))
    except (sqlite3.Error, KeyError, ValueError) as exc:
        return AuditReport(0, None, None, None, (AuditProblem(0, "unreadable", f"{exc}"),))
    problems = _check_chain(rows, anchor_seq, anchor_hash)
    last_seq = rows[-1][0] if rows else anchor_seq - 1
    last_hash = rows[-1][3] if rows else anchor_hash
    if head_seq > last_seq:
        problems.append(AuditProblem(last_seq + 1, "truncated", f"records {last_seq + 1}..{head_seq} are missing"))
    elif (head_seq, head_hash) != (last_seq, last_hash):
        problems.append(AuditProblem(last_seq, "truncated", "the head pointer does not match the last record"))
    problems += _check_anchor(rows, anchor_seq, anchor_hash)
    if witness is not None:
        problems += _check_witness(rows, anchor_seq, witness)
    first = rows[0][0] if rows else None
    return AuditReport(len(rows), first, rows[-1][0] if rows else None, last_hash, tuple(problems))


def _check_chain(rows: list[tuple], anchor_seq: int, anchor_hash: str) -> list[AuditProblem]:
    problems = []
    expected_seq, prev = anchor_seq, anchor_hash
    for seq, ts, prev_hash, hash_, body in rows:
        if seq > expected_seq:
            problems.append(AuditProblem(expected_seq, "missing", f"records {expected_seq}..{seq - 1} were deleted"))
        if prev_hash != prev:
            problems.append(AuditProblem(seq, "chain_break", "does not link to the record before it"))
        if chain_hash(prev_hash, body) != hash_:
            problems.append(AuditProblem(seq, "edited", "its content does not match its hash"))
        try:
            data = json.loads(body)
            if data.get("seq") != seq:
                problems.append(AuditProblem(seq, "out_of_order", f"holds record {data.get('seq')}"))
            if data.get("ts") != ts:
                problems.append(AuditProblem(seq, "edited", "its time column differs from its content"))
        except (ValueError, AttributeError):
            problems.append(AuditProblem(seq, "edited", "its content is not a JSON object"))
        expected_seq, prev = seq + 1, hash_
    return problems


def _check_anchor(rows: list[tuple], anchor_seq: int, anchor_hash: str) -> list[AuditProblem]:
    """A chain that does not start at record 1 must name its start in its last prune record."""
    if anchor_seq == 1 and anchor_hash == GENESIS:
        return []
    for seq, _, _, _, body in reversed(rows):
        try:
            data = json.loads(body)
        except ValueError:
            continue
        if data.get("event_type") == PRUNED:
            details = data.get("details", {})
            if (details.get("anchor_seq"), details.get("anchor_hash")) == (anchor_seq, anchor_hash):
                return []
            return [AuditProblem(anchor_seq, "anchor", f"the chain starts where prune record {seq} does not say")]
    return [AuditProblem(anchor_seq, "anchor", "records before it were deleted without a prune record")]


def _check_witness(rows: list[tuple], anchor_seq: int, witness: tuple[int, str]) -> list[AuditProblem]:
    seq, expected = witness
    if seq < anchor_seq:
        return []  # pruned since the witness was taken
    stored = next((r[3] for r in rows if r[0] == seq), None)
    if stored != expected:
        return [AuditProblem(seq, "witness", "differs from the witnessed hash: the chain was rewritten")]
    return []
