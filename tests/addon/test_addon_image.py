"""The add-on's image and start script: the Dockerfile read the way the Supervisor builds it, the
package the image installs, and `addon/run.sh` run for real, against a real Mosquitto broker
standing in for the one the Supervisor hands out."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from mqtt_client import Collector, wait_until
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_addon import CONFIG, ROOT, options_file

from facelock_mqtt.tools.addon_schema import IMAGE_LIVENESS


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split()[0].upper(), line.split(maxsplit=1)[1]) for line in joined.splitlines() if line.strip()]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context."""
    result = []
    for args in instructions("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert "--from" not in args, "a multi-stage COPY needs its own check"
        result.append((words[:-1], words[-1]))
    return result


def labels() -> dict[str, str]:
    found = {}
    for args in instructions("LABEL"):
        found.update(word.split("=", 1) for word in shlex.split(args))
    return found


def test_dockerfile_is_debian_based_with_addon_labels():
    base = instructions("FROM")
    assert len(base) == 1 and re.search(r"bookworm|trixie|debian", base[0]) and "alpine" not in base[0]
    args = dict(a.split("=", 1) for a in instructions("ARG"))
    assert args["BUILD_VERSION"] == CONFIG["version"] and args["BUILD_ARCH"] in CONFIG["arch"]
    found = labels()
    assert found["io.hass.type"] == "addon"
    assert found["io.hass.name"] == CONFIG["name"] and found["io.hass.description"] == CONFIG["description"]
    assert found["io.hass.arch"] == "${BUILD_ARCH}" and found["io.hass.version"] == "${BUILD_VERSION}"


def test_dockerfile_environment_leaves_the_options_in_charge():
    env = {}
    for args in instructions("ENV"):
        env.update(word.split("=", 1) for word in shlex.split(args))
    assert env["FACELOCK_DATA_DIR"] == "/data" and env["FACELOCK_OPTIONS_FILE"] == "/data/options.json"
    # FACELOCK_* variables outrank options.json: any other one would silently override the UI.
    assert sorted(k for k in env if k.startswith("FACELOCK_")) == ["FACELOCK_DATA_DIR", "FACELOCK_OPTIONS_FILE"]
    installs = [a for a in instructions("RUN") if "pip install" in a]
    assert len(installs) == 1 and "[" not in installs[0], "no test or training extras in the image"


def test_the_image_installs_exact_pins_within_the_package_ranges():
    """addon/constraints.txt pins every distribution exactly; the image's pip install (and its
    build environment) uses it; pyproject.toml's ranges, for library users, admit every pin."""
    pins = {}
    for line in (ROOT / "addon" / "constraints.txt").read_text().splitlines():
        if line := line.split("#")[0].strip():
            name, _, version = line.partition("==")
            assert re.fullmatch(r"[0-9][0-9A-Za-z.]*", version), f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    assert any("addon/constraints.txt" in sources for sources, _ in copies())
    (install,) = [a for a in instructions("RUN") if "pip install" in a]
    assert "--constraint constraints.txt pip " in install, "pip itself first: --build-constraint needs pip >= 25.3"
    assert "--build-constraint constraints.txt ." in install
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for spec in pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]:
        requirement = Requirement(spec)
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is not pinned in addon/constraints.txt"
        assert requirement.specifier.contains(pin), f"{requirement.name}=={pin} is outside {requirement.specifier}"


def test_dockerfile_copies_existing_files_and_runs_an_executable_start_script():
    for sources, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} is missing"
    command = json.loads(instructions("CMD")[0])
    assert not instructions("ENTRYPOINT") and len(command) == 1
    script = next(sources[0] for sources, dest in copies() if dest == command[0])
    path = ROOT / script
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert os.access(path, os.X_OK), f"{script} is not executable (git update-index --chmod=+x)"


def test_the_image_install_step_builds_the_package_with_its_data_and_command(tmp_path):
    """The Dockerfile's COPY set, as the image's `pip install .` sees it, builds a complete wheel."""
    context = tmp_path / "context"
    for sources, dest in copies():
        if dest.startswith("/"):
            continue  # not part of the package build (the start script)
        for source in sources:
            target = context / dest / Path(source).name if dest.endswith("/") else context / dest
            if (ROOT / source).is_dir():
                subprocess.run(["cp", "-r", str(ROOT / source), str(target)], check=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((ROOT / source).read_bytes())
    out = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(context)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("facelock_mqtt-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "facelock = facelock_mqtt.cli:main" in entry_points
    for module in ("cli.py", "service.py", "models/default_calibration.json", "models/liveness_calibration.json"):
        assert f"facelock_mqtt/{module}" in names
    assert not [n for n in names if n.startswith("training/")], "training code stays out of the image"


def test_run_script_is_strict_bash_that_execs_the_service():
    script = ROOT / "addon" / "run.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    lines = [line.strip() for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "set -euo pipefail" and lines[-1] == 'exec facelock run "$@"'


def addon_env(tmp_path: Path, options: Path, **extra: str) -> dict[str, str]:
    """The container's environment: the image's ENV, the venv's `facelock` first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACELOCK_", "SUPERVISOR_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(FACELOCK_DATA_DIR=str(tmp_path / "data"), FACELOCK_OPTIONS_FILE=str(options), **extra)
    return env


def test_run_script_stops_at_start_naming_a_wrong_option(tmp_path):
    options = options_file(tmp_path, {"match": {"target_far": 0}})
    result = subprocess.run(
        [str(ROOT / "addon" / "run.sh")], env=addon_env(tmp_path, options),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "match.target_far" in result.stderr and "greater than 0" in result.stderr
    assert "no SUPERVISOR_TOKEN" in result.stderr


def test_run_script_serves_home_assistant_with_the_addon_options(tmp_path, mosquitto):
    """The add-on's start: options.json from the UI, the broker the Supervisor would hand out."""
    user = {"cameras": [{"name": "front_door", "mqtt_topic": "frigate/front_door/person/snapshot"}],
            "mqtt": {"base_topic": "addon_test"}}  # fmt: skip
    env = addon_env(
        tmp_path, options_file(tmp_path, user),
        FACELOCK_MQTT__HOST=mosquitto.host, FACELOCK_MQTT__PORT=str(mosquitto.port),
    )  # fmt: skip
    collector = Collector(mosquitto.host, mosquitto.port, ["addon_test/#", "homeassistant/lock/#"])
    proc = subprocess.Popen([str(ROOT / "addon" / "run.sh")], env=env, stderr=subprocess.PIPE, text=True)
    try:
        collector.wait_for("addon_test/availability", b"online", timeout=120)
        collector.wait_for("addon_test/front_door/lock/state", b"LOCKED")
        (config,) = [json.loads(m.payload) for m in collector.messages if m.topic.startswith("homeassistant/lock/")]
        assert config["command_topic"] == "addon_test/front_door/lock/set" and "code_format" not in config
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        wait_until(lambda: collector.payloads("addon_test/availability")[-1:] == [b"offline"], 5, "offline")
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate()[1]
        collector.close()
    # Outside the image the image's liveness folder is absent: the start says so, loudly.
    assert "LIVENESS DETECTION IS OFF" in log and IMAGE_LIVENESS in log and "LIVENESS UNAVAILABLE" in log
