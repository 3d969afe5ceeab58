"""Shared fixtures: the real face data folder, the liveness models, real Mosquitto brokers and a
local web server."""

from __future__ import annotations

import errno
import functools
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FACELOCK_SHARED", ROOT.parent / "shared"))


def _need(path: Path, what: str) -> Path:
    """Return `path`, or fail in CI / skip elsewhere with a clear reason when it is missing."""
    if path.exists():
        return path
    message = f"{what} not found at {path} (see ../shared/data/README.md)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED / "data", "shared face data")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return _need(SHARED / "models", "shared models")


@pytest.fixture(scope="session")
def liveness_models(shared_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The liveness models as users get them: `liveness install` (no PyTorch) of the shared weights.

    Session-wide and read-only by convention: a test that alters the models copies the folder first.
    """
    from facelock_mqtt.guards.liveness_install import install

    out = tmp_path_factory.mktemp("liveness") / "models"
    install(shared_models / "minifasnet", out)
    return out


@pytest.fixture
def web_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on localhost serving a folder, standing in for GitHub."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """A real Mosquitto broker of a test's own, on a free port, that a test may stop and restart."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            pytest.fail("the mosquitto binary is missing (apt-get install mosquitto)")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_conf}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc.stderr.close()  # an unclosed pipe is a ResourceWarning per broker
            self.proc = None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`small_disk("4m")`: a folder on a tmpfs of that size, so writes past it fail with a real
    ENOSPC. Needs root (CI runs as root on these machines: there it fails instead of skipping)."""
    mounts: list[Path] = []

    def make(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"CI runs as root and can mount a tmpfs: {done.stderr.strip()}")
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
        mounts.append(folder)
        return folder

    yield make
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of `folder` to the last byte: the writes end with ENOSPC."""
    for name, block in (("filler", 1 << 16), ("filler-tail", 512)):
        with open(folder / name, "wb", buffering=0) as out, pytest.raises(OSError) as full:
            while True:
                out.write(bytes(block))
        assert full.value.errno == errno.ENOSPC, full.value
