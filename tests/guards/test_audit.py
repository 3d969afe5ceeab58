"""Audit trail: records round-trip, every kind of tampering is found and named, retention prunes
without breaking the chain, files are owner-only, and the CLI exits non-zero on tamper."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from facelock_mqtt.cli_audit import add_audit_commands, run_audit
from facelock_mqtt.guards.audit import (
    AUDIT_FILE,
    PRUNED,
    AuditError,
    AuditLog,
    canonical_json,
    chain_hash,
    list_records,
    verify,
)
from facelock_mqtt.settings import AuditSettings

DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / AUDIT_FILE


def decision(i: int) -> dict:
    """Details as the decision stage produces them, numpy values included."""
    return {
        "score": np.float32(0.41 + i / 100),
        "scores": np.array([0.4, 0.45, np.nan], np.float32),
        "threshold": 0.377,
        "target_far": 1e-5,
        "margin": 0.12,
        "frames": 5,
        "matched_frames": np.int64(2),
        "liveness": {"score": 0.93, "temporal": "ok"},
        "quality": {"blur": 120.5, "brightness": 130.0, "face_px": 96},
        "latency_ms": 412.0,
        "reason": "recognised",
    }


def fill(db: Path, clock: Clock, count: int = 10, step_s: float = 60.0) -> list:
    log = AuditLog(db, AuditSettings(), clock)
    records = []
    for i in range(count):
        kind = "granted" if i % 3 == 0 else "denied"
        records.append(log.append(kind, camera="front", person="alice" if kind == "granted" else None, details=decision(i)))
        clock.t += step_s
    log.close()
    return records


@pytest.fixture
def tamper(db: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Opens the trail behind FaceLock's back, once the test has written it."""
    conns: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conns.append(sqlite3.connect(db, isolation_level=None))
        return conns[-1]

    yield connect
    for conn in conns:
        conn.close()


def problems(db: Path) -> list[tuple[int, str]]:
    report = verify(db)
    assert not report.ok and "TAMPERED" in report.summary()
    return [(p.seq, p.kind) for p in report.problems]


def test_records_round_trip_and_verify(db: Path, clock: Clock) -> None:
    written = fill(db, clock)
    records = list_records(db)
    assert [r.seq for r in records] == list(range(1, 11))
    first = records[0]
    assert (first.event_type, first.camera, first.person) == ("granted", "front", "alice")
    assert first.details["score"] == pytest.approx(0.41) and first.details["scores"][2] == "nan"
    assert first.details["matched_frames"] == 2 and first.details["liveness"]["temporal"] == "ok"
    assert [r.hash for r in records] == [r.hash for r in written]
    report = verify(db)
    assert report.ok and report.records == 10 and (report.first_seq, report.last_seq) == (1, 10)
    assert report.head_hash == written[-1].hash
    assert [r.seq for r in list_records(db, limit=2)] == [9, 10]
    assert {r.person for r in list_records(db, person="alice")} == {"alice"}
    assert all(r.event_type == "denied" for r in list_records(db, event_type="denied"))
    assert [r.seq for r in list_records(db, since=clock.t - 120)] == [9, 10]


def test_each_hash_covers_the_previous_one(db: Path, clock: Clock) -> None:
    records = fill(db, clock, 3)
    prev = "0" * 64
    for r in records:
        body = canonical_json(
            {"seq": r.seq, "ts": r.ts, "event_type": r.event_type, "camera": r.camera, "person": r.person,
             "details": r.details}
        )
        assert r.hash == chain_hash(prev, body)
        prev = r.hash


def test_reopening_continues_the_chain(db: Path, clock: Clock) -> None:
    fill(db, clock, 3)
    fill(db, clock, 2)
    assert [r.seq for r in list_records(db)] == [1, 2, 3, 4, 5] and verify(db).ok


def test_an_edited_field_is_found(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    fill(db, clock)
    tamper().execute("UPDATE records SET body = replace(body, '\"denied\"', '\"granted\"') WHERE seq = 5")
    assert problems(db) == [(5, "edited")]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(
    db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]
) -> None:
    fill(db, clock)
    conn = tamper()
    prev, body = conn.execute("SELECT prev_hash, body FROM records WHERE seq = 5").fetchone()
    forged = body.replace('"person":null', '"person":"mallory"')
    assert forged != body
    conn.execute("UPDATE records SET body = ?, hash = ? WHERE seq = 5", (forged, chain_hash(prev, forged)))
    assert problems(db) == [(6, "chain_break")]


def test_an_edited_time_column_is_found(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    fill(db, clock)
    tamper().execute("UPDATE records SET ts = ts - 99999 WHERE seq = 7")
    assert problems(db) == [(7, "edited")]


def test_a_deleted_record_is_found(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    fill(db, clock)
    tamper().execute("DELETE FROM records WHERE seq = 5")
    assert problems(db) == [(5, "missing"), (6, "chain_break")]


def test_reordered_records_are_found(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    fill(db, clock)
    conn = tamper()
    for a, b in ((3, -1), (4, 3), (-1, 4)):
        conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (b, a))
    found = problems(db)
    assert (3, "out_of_order") in found and (4, "out_of_order") in found
    assert {seq for seq, _ in found} == {3, 4, 5}


def test_a_truncated_tail_is_found(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    fill(db, clock)
    tamper().execute("DELETE FROM records WHERE seq >= 9")
    assert problems(db) == [(9, "truncated")]


def test_a_deleted_start_is_found(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    fill(db, clock)
    conn = tamper()
    conn.execute("DELETE FROM records WHERE seq <= 3")
    assert (1, "missing") in problems(db)
    # ...even when the anchor is moved to look like pruning: no prune record names it.
    row = conn.execute("SELECT prev_hash FROM records WHERE seq = 4").fetchone()
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'anchor_seq'")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'anchor_hash'", row)
    assert problems(db) == [(4, "anchor")]


def test_a_consistent_rewrite_needs_a_witness(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]) -> None:
    """Someone with write access who recomputes every later hash and the head is not caught by the
    chain alone; a head hash kept elsewhere catches it."""
    records = fill(db, clock)
    witness = (records[-1].seq, records[-1].hash)
    assert verify(db, witness).ok
    conn = tamper()
    rows = conn.execute("SELECT seq, prev_hash, body FROM records WHERE seq >= 6 ORDER BY seq").fetchall()
    prev = rows[0][1]
    for seq, _, body in rows:
        if seq == 6:
            body = body.replace('"person":null', '"person":"mallory"')
        digest = chain_hash(prev, body)
        conn.execute("UPDATE records SET prev_hash = ?, body = ?, hash = ? WHERE seq = ?", (prev, body, digest, seq))
        prev = digest
    conn.execute("UPDATE meta SET value = ? WHERE key = 'head_hash'", (prev,))
    assert verify(db).ok  # undetectable from the file alone
    report = verify(db, witness)
    assert [(p.seq, p.kind) for p in report.problems] == [(10, "witness")]


def test_retention_prunes_and_the_chain_still_verifies(
    db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection]
) -> None:
    log = AuditLog(db, AuditSettings(retention_days=30), clock)
    for day in range(60):  # one decision a day; appends prune at most once a day
        log.append("denied", camera="front", details={"day": day})
        clock.t += DAY
    kept = log.records()
    days = [r.details["day"] for r in kept if r.event_type == "denied"]
    assert days == list(range(29, 60))  # day 29 was exactly 30 days old at the last prune
    prunes = [r for r in kept if r.event_type == PRUNED]
    assert prunes and prunes[-1].details["anchor_seq"] == kept[0].seq
    assert log.verify().ok
    assert log.prune() == 1  # a day later, day 29 goes
    assert log.records()[0].details["day"] == 30
    assert log.prune() == 0 and log.verify().ok
    log.close()
    report = verify(db)
    assert report.ok, report.summary()
    conn = tamper()
    conn.execute("DELETE FROM records WHERE seq = ?", (report.first_seq,))  # deletion dressed as pruning
    row = conn.execute("SELECT seq, prev_hash FROM records ORDER BY seq LIMIT 1").fetchone()
    conn.execute("UPDATE meta SET value = ? WHERE key = 'anchor_seq'", (str(row[0]),))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'anchor_hash'", (row[1],))
    assert problems(db) == [(row[0], "anchor")]


def test_files_are_owner_only(tmp_path: Path, clock: Clock) -> None:
    old = os.umask(0)
    try:
        log = AuditLog(tmp_path / AUDIT_FILE, AuditSettings(), clock)
        log.append("granted", camera="front", person="alice")
        files = sorted(tmp_path.iterdir())
        assert {p.name for p in files} >= {AUDIT_FILE, AUDIT_FILE + "-wal", AUDIT_FILE + "-shm"}
        assert {stat.S_IMODE(os.stat(p).st_mode) for p in files} == {0o600}
        log.close()
    finally:
        os.umask(old)


def test_reading_while_the_service_writes(db: Path, clock: Clock) -> None:
    log = AuditLog(db, AuditSettings(), clock)
    log.append("granted", camera="front", person="alice")
    assert [r.person for r in list_records(db)] == ["alice"]
    log.append("denied", camera="front")
    assert verify(db).ok and len(list_records(db)) == 2
    log.close()


def test_unrecordable_details_write_nothing(db: Path, clock: Clock) -> None:
    log = AuditLog(db, AuditSettings(), clock)
    with pytest.raises(AuditError, match="cannot record a object"):
        log.append("denied", details={"thing": object()})
    assert log.records() == [] and log.head() == (0, "0" * 64)
    log.close()


def test_not_a_database(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / AUDIT_FILE
    path.write_bytes(b"this is not sqlite" * 100)
    path.chmod(0o600)
    with pytest.raises(AuditError, match="not a usable SQLite database"):
        AuditLog(path, AuditSettings(), clock)
    report = verify(path)
    assert not report.ok and report.problems[0].kind == "unreadable"


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="facelock")
    add_audit_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return run_audit(args)


def test_cli_list_and_verify(db: Path, clock: Clock, tamper: Callable[[], sqlite3.Connection], capsys) -> None:
    records = fill(db, clock, 4)
    assert run_cli("audit", "--db", str(db), "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["seq"] for r in listed] == [1, 2, 3, 4] and listed[0]["person"] == "alice"
    assert run_cli("audit", "--db", str(db), "list", "--camera", "front", "--limit", "1") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].split()[0] == "4"
    assert "granted" in out[0] and "alice" in out[0] and "threshold=0.377" in out[0]
    assert run_cli("audit", "--db", str(db), "verify", "--witness", f"4:{records[-1].hash}") == 0
    assert "intact" in capsys.readouterr().out
    tamper().execute("UPDATE records SET body = replace(body, '0.377', '0.1') WHERE seq = 2")
    assert run_cli("audit", "--db", str(db), "verify") == 1
    assert "record 2: edited" in capsys.readouterr().out
    assert run_cli("audit", "--db", str(db), "verify", "--witness", "nonsense") == 2
    missing = str(db.with_name("missing.sqlite3"))
    assert run_cli("audit", "--db", missing, "verify") == 1
    assert run_cli("audit", "--db", missing, "list") == 2
    assert "no audit trail" in capsys.readouterr().err


@pytest.fixture
def read_only_copy(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable folder, the same folder mounted read-only): a real read-only file system."""
    source, view = tmp_path / "data", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(source), str(view)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot bind-mount a read-only folder here (needs root): {exc}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True, capture_output=True)
        yield source, view
    finally:
        # Lazy: the mount goes even if something still holds a file there (no leftover mounts).
        assert subprocess.run(["umount", "-l", str(view)], capture_output=True).returncode == 0


def test_a_read_only_data_folder_is_not_reported_as_tampering(read_only_copy, clock: Clock, capsys) -> None:
    """The service left its WAL (killed, or a backup copied without the -shm file): on a read-only
    folder SQLite cannot open the trail. That is "cannot open", exit 2, never "TAMPERED"."""
    source, view = read_only_copy
    killed = (
        "import os, sys\nfrom facelock_mqtt.guards.audit import AuditLog\nfrom facelock_mqtt.settings import AuditSettings\n"
        "AuditLog(sys.argv[1], AuditSettings()).append('granted', camera='front', person='alice', details={})\n"
        "os._exit(0)  # killed: the record is still in the WAL\n"
    )
    subprocess.run([sys.executable, "-c", killed, str(source / AUDIT_FILE)], check=True, timeout=60)
    (source / f"{AUDIT_FILE}-shm").unlink()
    assert (source / f"{AUDIT_FILE}-wal").stat().st_size > 0
    report = verify(view / AUDIT_FILE)
    assert not report.checked and "TAMPERED" not in report.summary()
    assert run_cli("audit", "--db", str(view / AUDIT_FILE), "verify") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open the audit trail") and "nothing was verified" in err
    assert run_cli("audit", "--db", str(source / AUDIT_FILE), "verify") == 0  # the trail itself is intact
    assert "audit trail intact: 1 records" in capsys.readouterr().out
