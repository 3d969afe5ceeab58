"""Decision snapshots for the owner's panel: the frame a decision was made on, kept on disk.

One owner-only JPEG per audited decision, `<data_dir>/snapshots/<audit seq>.jpg` (the clean
frame, no drawing, so "that was me" can enroll from it), with `<seq>.json` holding the face box.
Bounded by count and bytes, and files older than the audit retention go with their records.
Writes happen on a worker thread: the door thread only queues the frame, so a slow disk never
delays an unlock; a full queue drops the snapshot (the decision itself is in the audit trail).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from .files import PRIVATE_FILE, StorageError, secure_dir

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
JPEG_QUALITY = 90
QUEUE_SIZE = 8


class SnapshotStore:
    def __init__(
        self,
        folder: Path | str,
        retention_days: float,
        max_count: int = 500,
        max_bytes: int = 200 * 1024 * 1024,
    ) -> None:
        self.folder = secure_dir(folder)
        self.retention_s = retention_days * 86400.0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._queue: queue.Queue[tuple[int, np.ndarray, list[float]] | None] = queue.Queue(QUEUE_SIZE)
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def save(self, seq: int, image: np.ndarray, face: object) -> None:
        """Queue the frame of audit record `seq` (with the face whose box is drawn); never blocks."""
        box = [round(float(v), 1) for v in getattr(face, "box", ())[:4]]
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="facelock-snapshots", daemon=True)
                self._worker.start()
        try:
            self._queue.put_nowait((seq, image, box))
        except queue.Full:
            log.warning("snapshot of audit record %d dropped: the disk is not keeping up", seq)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every queued snapshot is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
                self.prune()
            except (OSError, StorageError, cv2.error) as exc:
                log.warning("snapshot not kept: %s", exc)
            finally:
                self._queue.task_done()

    def _write(self, seq: int, image: np.ndarray, box: list[float]) -> None:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise StorageError(f"snapshot {seq}: JPEG encoding failed")
        _write_owner_only(self.folder / f"{seq}.json", json.dumps({"box": box}).encode())
        _write_owner_only(self.folder / f"{seq}.jpg", data.tobytes())  # last: a .jpg always has its box

    def jpeg(self, seq: int) -> bytes | None:
        path = self.folder / f"{int(seq)}.jpg"
        return path.read_bytes() if path.is_file() else None

    def box(self, seq: int) -> list[float] | None:
        path = self.folder / f"{int(seq)}.json"
        try:
            return json.loads(path.read_text()).get("box")
        except (OSError, ValueError):
            return None

    def seqs(self) -> list[int]:
        return sorted(int(p.stem) for p in self.folder.glob("*.jpg") if p.stem.isdigit())

    def prune(self, now: float | None = None) -> int:
        """Drop snapshots past the audit retention, then the oldest beyond the count and byte bounds."""
        now = time.time() if now is None else now
        entries = [(seq, self.folder / f"{seq}.jpg") for seq in self.seqs()]
        sizes = {seq: _size(path) for seq, path in entries}
        total, dropped = sum(sizes.values()), 0
        for index, (seq, path) in enumerate(entries):
            remaining = len(entries) - index
            too_old = _mtime(path) < now - self.retention_s
            if not (too_old or remaining > self.max_count or total > self.max_bytes):
                break
            for stale in (path, path.with_suffix(".json")):
                stale.unlink(missing_ok=True)
            total -= sizes[seq]
            dropped += 1
        return dropped


def _write_owner_only(path: Path, data: bytes) -> None:
    """Atomic, owner-only; no fsync: a snapshot lost in a power cut is no loss worth a slow disk."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
