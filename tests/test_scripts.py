"""The repository's scripts: `scripts/setup.sh` installs only when it must, so `scripts/run.sh`
starts the service at once (a reinstall at every start cost 16-25 s)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def installed_metadata() -> list[tuple[str, int]]:
    """The package's install records in the venv, with their change times: pip rewrites them."""
    records = sorted(VENV.glob("lib/python*/site-packages/facelock_mqtt-*.dist-info/*"))
    records += sorted(VENV.glob("lib/python*/site-packages/__editable__*facelock_mqtt*"))
    return [(str(p), p.stat().st_mtime_ns) for p in records]


def test_setup_installs_once_then_returns_at_once() -> None:
    if Path(sys.prefix).resolve() != VENV.resolve():
        pytest.skip(f"the tests run from {sys.prefix}, not from the .venv that scripts/setup.sh manages")
    setup = [str(ROOT / "scripts" / "setup.sh"), "test"]
    subprocess.run(setup, check=True, capture_output=True, timeout=900)  # a real install if the stamp is stale
    stamp = VENV / ".installed-test"
    inputs = b"".join((ROOT / name).read_bytes() for name in ("pyproject.toml", "addon/constraints.txt", "scripts/setup.sh"))
    assert stamp.read_text().strip() == hashlib.sha256(inputs).hexdigest()  # what and how to install
    before = installed_metadata()
    assert before, "the package is not installed in .venv"
    again = subprocess.run(setup, capture_output=True, text=True, timeout=120, check=False)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert installed_metadata() == before  # pip did not run
    runtime = subprocess.run([setup[0], "runtime"], capture_output=True, text=True, timeout=120, check=False)
    assert runtime.returncode == 0 and installed_metadata() == before  # the test extras include the runtime
