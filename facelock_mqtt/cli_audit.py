"""`facelock audit list` and `facelock audit verify`: read the audit trail, never write it."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .guards.audit import AUDIT_FILE, AuditError, AuditRecord, list_records, verify
from .settings import Settings, load_settings

_SUMMARY_KEYS = ("score", "threshold", "target_far", "frames", "liveness", "latency_ms", "reason")


def add_audit_commands(subparsers: Any) -> None:
    """Register `audit list` and `audit verify` on the CLI's subparsers; run them with run_audit()."""
    audit = subparsers.add_parser("audit", help="list or verify the decision audit trail")
    audit.add_argument("--db", type=Path, help=f"audit trail file (default: <data_dir>/{AUDIT_FILE})")
    commands = audit.add_subparsers(dest="audit_command", required=True)

    show = commands.add_parser("list", help="print audit records, oldest first")
    show.add_argument("--json", action="store_true", help="print a JSON array")
    show.add_argument("--limit", type=_positive, default=None, help="only the newest N records")
    show.add_argument("--camera", help="only this door")
    show.add_argument("--person", help="only this person")
    show.add_argument("--event", dest="event_type", help="only this event type (e.g. granted, denied)")

    check = commands.add_parser("verify", help="check the hash chain; exit 1 if it was tampered with")
    check.add_argument("--witness", help="SEQ:HASH of a head recorded elsewhere, to detect a rewritten chain")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def run_audit(args: argparse.Namespace, settings: Settings | None = None) -> int:
    """Run the parsed `audit` command. Exit status: 0 fine; verify: 1 tampered, damaged or missing,
    2 when the trail cannot be opened (nothing verified); list: 2 when the trail cannot be read."""
    db = args.db or (settings or load_settings()).data_dir / AUDIT_FILE
    return cmd_list(args, db) if args.audit_command == "list" else cmd_verify(args, db)


def cmd_list(args: argparse.Namespace, db: Path) -> int:
    try:
        records = list_records(
            db, limit=args.limit, camera=args.camera, person=args.person, event_type=args.event_type
        )
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=1))
    else:
        for record in records:
            print(_line(record))
    return 0


def _line(record: AuditRecord) -> str:
    when = datetime.fromtimestamp(record.ts).isoformat(timespec="seconds")
    facts = " ".join(f"{k}={record.details[k]}" for k in _SUMMARY_KEYS if k in record.details)
    return f"{record.seq:>7} {when} {record.event_type:<16} {record.camera or '-':<12} {record.person or '-':<12} {facts}"


def cmd_verify(args: argparse.Namespace, db: Path) -> int:
    witness = None
    if args.witness:
        seq, _, digest = args.witness.partition(":")
        if not seq.isdigit() or len(digest) != 64:
            print("error: --witness must be SEQ:HASH (a record number and its 64-hex-digit hash)", file=sys.stderr)
            return 2
        witness = (int(seq), digest.lower())
    report = verify(db, witness)
    if not report.checked:
        print(f"error: {report.summary()}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.ok else 1
