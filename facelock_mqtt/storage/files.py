"""Owner-only storage for FaceLock's private files: gallery, face crops, audit trail, lockout state.

Faces and the audit trail are personal data, and whoever can write the gallery can add a face that
opens the door. So every folder is 0700 and every file 0600, set explicitly (never left to the
umask), and existing files are checked before they are trusted:

- group/world *readable* only: a privacy leak, not a sign of tampering; fixed to owner-only, with
  a warning in the log;
- group/world *writable*, owned by another user, a symbolic link, or not the expected kind of
  file: anyone could have changed it, so it is refused (StorageError) and the user told what to
  check and fix.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..errors import FaceLockError

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class StorageError(FaceLockError):
    """A private file or folder is unsafe to use (foreign owner, writable by others, a link)."""


def _check_and_fix(fd: int, path: Path, want_dir: bool) -> None:
    """Refuse what may have been tampered with; make what is merely readable by others private."""
    st = os.fstat(fd)
    kind = "a folder" if want_dir else "a regular file"
    right_kind = stat.S_ISDIR(st.st_mode) if want_dir else stat.S_ISREG(st.st_mode)
    if not right_kind:
        raise StorageError(f"{path} is not {kind}; move it away so FaceLock can create its own")
    if st.st_uid != os.geteuid():
        raise StorageError(
            f"{path} belongs to uid {st.st_uid}, not to FaceLock's uid {os.geteuid()}: "
            "check who created it, then chown it or move it away"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        raise StorageError(
            f"{path} is writable by other users (mode {mode:o}), so its contents cannot be trusted: "
            f"check it, then run chmod {PRIVATE_DIR if want_dir else PRIVATE_FILE:o} on it"
        )
    want = PRIVATE_DIR if want_dir else PRIVATE_FILE
    if mode != want:
        if mode & 0o077:
            log.warning("%s was readable by other users (mode %o); made it owner-only (%o)", path, mode, want)
        os.fchmod(fd, want)


def _open_nofollow(path: Path, flags: int, mode: int = PRIVATE_FILE) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if path.is_symlink():
            raise StorageError(f"{path} is a symbolic link; FaceLock does not follow links for private files") from exc
        raise StorageError(f"cannot open {path}: {exc.strerror}") from exc


def secure_dir(path: Path | str) -> Path:
    """Create `path` as an owner-only folder (missing parents too), or check and fix an existing one."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists() and not p.is_symlink()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
            folder.chmod(PRIVATE_DIR)  # mkdir's mode passes through the umask
        except FileExistsError:
            pass  # created meanwhile by someone else: checked below if it is `path`
        except OSError as exc:
            raise StorageError(f"cannot create folder {folder}: {exc.strerror}") from exc
    fd = _open_nofollow(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check_and_fix(fd, path, want_dir=True)
    finally:
        os.close(fd)
    return path


def secure_file(path: Path | str, create: bool = True) -> Path:
    """Create `path` empty as an owner-only file (never truncating one), or check and fix an existing one."""
    path = Path(path)
    flags = os.O_RDONLY | (os.O_CREAT if create else 0)
    fd = _open_nofollow(path, flags)
    try:
        _check_and_fix(fd, path, want_dir=False)
    finally:
        os.close(fd)
    return path


def secure_tree(root: Path | str) -> Path:
    """Secure `root` and everything under it: fix readable-by-others entries, refuse unsafe ones."""
    root = secure_dir(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            secure_dir(Path(folder, name))
        for name in files:
            secure_file(Path(folder, name), create=False)
    return root


def write_private(path: Path | str, data: bytes) -> Path:
    """Replace `path` atomically with `data` as an owner-only file: a crash leaves the old or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash; unlinking a link never touches its target
    fd = _open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot replace {path}: {exc.strerror}") from exc
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

