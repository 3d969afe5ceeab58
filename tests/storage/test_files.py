"""Owner-only storage: modes checked with os.stat under a permissive umask, unsafe files refused."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from facelock_mqtt.storage.files import (
    StorageError,
    secure_dir,
    secure_file,
    secure_tree,
    write_private,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The most permissive umask: modes must come from the code, not from the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_created_dirs_and_files_are_owner_only(tmp_path: Path) -> None:
    data = secure_dir(tmp_path / "data" / "gallery")
    assert mode(data) == 0o700 and mode(tmp_path / "data") == 0o700  # missing parents too
    db = secure_file(data / "gallery.sqlite3")
    assert db.is_file() and mode(db) == 0o600
    crop = write_private(data / "crop.bin", b"\x00\x01")
    assert mode(crop) == 0o600 and crop.read_bytes() == b"\x00\x01"


def test_existing_content_is_kept_and_readable_modes_are_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    gallery = folder / "gallery.sqlite3"
    gallery.write_bytes(b"faces")
    gallery.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="facelock_mqtt.storage.files"):
        secure_dir(folder)
        secure_file(gallery)
    assert mode(folder) == 0o700 and mode(gallery) == 0o600
    assert gallery.read_bytes() == b"faces"  # secure_file never truncates
    assert sum("readable by other users" in r.message for r in caplog.records) == 2


@pytest.mark.parametrize("bad_mode", [0o666, 0o620, 0o602])
def test_writable_by_others_is_refused_and_left_alone(tmp_path: Path, bad_mode: int) -> None:
    gallery = tmp_path / "gallery.sqlite3"
    gallery.write_bytes(b"faces")
    gallery.chmod(bad_mode)
    with pytest.raises(StorageError, match="writable by other users"):
        secure_file(gallery)
    assert mode(gallery) == bad_mode


def test_group_writable_dir_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "crops"
    folder.mkdir()
    folder.chmod(0o770)
    with pytest.raises(StorageError, match="writable by other users"):
        secure_dir(folder)


def test_links_are_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"secret")
    target.chmod(0o644)
    (tmp_path / "audit.sqlite3").symlink_to(target)
    with pytest.raises(StorageError, match="symbolic link"):
        secure_file(tmp_path / "audit.sqlite3")
    assert mode(target) == 0o644
    (tmp_path / "realdir").mkdir(mode=0o755)
    (tmp_path / "data").symlink_to(tmp_path / "realdir")
    with pytest.raises(StorageError, match="symbolic link"):
        secure_dir(tmp_path / "data")


def test_foreign_owner_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        foreign = tmp_path / "gallery.sqlite3"
        foreign.write_bytes(b"faces")
        foreign.chmod(0o600)
        os.chown(foreign, 54321, 54321)
    else:
        foreign = Path("/etc/hostname")  # owned by root
    with pytest.raises(StorageError, match="belongs to uid"):
        secure_file(foreign, create=False)


def test_wrong_kind_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "lockout.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(StorageError, match="not a regular file"):
        secure_file(fifo)
    (tmp_path / "crops").write_bytes(b"")
    (tmp_path / "crops").chmod(0o600)
    with pytest.raises(StorageError):
        secure_dir(tmp_path / "crops")


def test_missing_file_without_create(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open"):
        secure_file(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()


def test_secure_tree_fixes_readable_and_refuses_writable(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for folder in (root, root / "crops", root / "crops" / "alice"):
        folder.mkdir(mode=0o755)
    files = [root / "gallery.sqlite3", root / "crops" / "alice" / "1.bin"]
    for f in files:
        f.write_bytes(b"x")
        f.chmod(0o644)
    secure_tree(root)
    assert [mode(p) for p in (root, root / "crops", root / "crops" / "alice")] == [0o700] * 3
    assert [mode(f) for f in files] == [0o600, 0o600]
    files[1].chmod(0o646)
    with pytest.raises(StorageError, match="1.bin"):
        secure_tree(root)


def test_write_private_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private(path, b"new" * 1000)
    assert path.read_bytes() == b"new" * 1000 and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temporary left over

