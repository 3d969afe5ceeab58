"""The package's architecture, enforced: data flows one way, CLI -> service -> door -> stages ->
models/storage -> settings/errors, and nothing in the runtime imports the tools.

Every import of every module is read from its source (the AST, so imports inside functions
count too) and resolved to the layer it lands in; an import from a higher layer, or across
layers that must not know each other, fails with the module and the line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facelock_mqtt"

# What each layer may import (besides itself). Top-level modules are their own layers.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "settings": {"errors"},
    "storage": {"settings", "errors"},
    "models": {"settings", "errors"},
    "pipeline": {"models", "storage", "settings", "errors"},
    "guards": {"pipeline", "models", "storage", "settings", "errors"},
    "homeassistant": {"settings", "errors"},
    "recognizer": {"guards", "pipeline", "models", "storage", "settings", "errors"},
    "remote": {"homeassistant", "guards", "pipeline", "models", "storage", "settings", "errors"},
    "door": {"recognizer", "remote", "guards", "homeassistant", "pipeline", "models", "storage", "settings", "errors"},
}
RUNTIME = set(ALLOWED) | {"web", "service"}
MAX_TOP_LEVEL_MODULES = 12


def layer_of(module: str) -> str:
    """`facelock_mqtt.pipeline.gate` -> `pipeline`; `facelock_mqtt.door` -> `door`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of the package in `path` (module `name`)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            found += [(node.lineno, t) for t in targets if t.startswith("facelock_mqtt")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("facelock_mqtt")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def violations(name: str, found: list[tuple[int, str]]) -> list[str]:
    source = layer_of(name)
    wrong = []
    for line, target in found:
        dest = layer_of(target)
        if dest in (source, "__init__"):
            continue
        if source in ALLOWED and dest not in ALLOWED[source]:
            wrong.append(f"line {line}: {source} imports {target}")
        elif source in RUNTIME and dest == "tools":
            wrong.append(f"line {line}: runtime layer {source} imports the tool {target}")
    return wrong


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_downwards(path: Path) -> None:
    wrong = violations(module_name(path), imports(path))
    assert not wrong, f"{path.relative_to(PACKAGE)}: " + "; ".join(wrong)


def test_the_check_catches_a_stage_importing_home_assistant_or_the_service(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from ..homeassistant.lock import DoorLock\n\ndef f():\n    from .. import service\n")
    wrong = violations("facelock_mqtt.pipeline.probe", imports(probe, "facelock_mqtt.pipeline.probe"))
    assert [w.split(":")[0] for w in wrong] == ["line 1", "line 4"], wrong


def test_top_level_is_small_and_every_subpackage_states_its_role() -> None:
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL_MODULES, sorted(top)
    for sub in (p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"{sub.name}/__init__.py must say what it owns and may import"


@pytest.mark.parametrize("module", ["facelock_mqtt.tools.flood", "facelock_mqtt.tools.fuzz", "facelock_mqtt.tools.addon_schema"])
def test_the_tools_python_m_entry_points_still_start(module: str, tmp_path: Path) -> None:
    """Moved into tools/, each `python -m` entry point documented in README and docs still runs."""
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr
