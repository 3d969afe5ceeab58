"""The add-on's whole start path as the Supervisor runs it, through subprocesses only.

The Supervisor writes /data/options.json from the add-on's options, gives the container
SUPERVISOR_TOKEN and starts the image's CMD, `addon/run.sh`; FaceLock then asks the
Supervisor's services API for the MQTT broker and its credentials. Here a stand-in Supervisor
on loopback (tests/addon/supervisor_standin.py) checks the bearer token and hands out a real
Mosquitto broker that refuses anonymous clients; FACELOCK_SUPERVISOR_URL points FaceLock at it
(inside the add-on it is http://supervisor). The person is enrolled with `facelock enroll`, the
door camera plays a clip of a later session, and what Home Assistant would see is read off MQTT.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mosquitto, free_port
from mqtt_client import Collector, wait_until
from service_helpers import nuaa_frames, write_clip
from supervisor_standin import SupervisorStandin, mqtt_answer
from test_addon import CONFIG, ROOT, options_file
from test_addon_image import addon_env

USER = "addons"  # the user name the Mosquitto add-on hands out to add-ons
DOOR = "front_door"
BASE = CONFIG["options"]["mqtt"]["base_topic"]
START_TIMEOUT_S = 180  # a first start prepares the models in /data


class PasswordMosquitto(Mosquitto):
    """A real Mosquitto that refuses anonymous clients: one user, from a mosquitto_passwd file."""

    def __init__(self, workdir: Path, user: str, password: str) -> None:
        super().__init__(workdir)
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not Path(tool).exists():
            pytest.fail("mosquitto_passwd is missing (apt-get install mosquitto)")
        passwd = workdir / "mosquitto.passwd"
        subprocess.run([tool, "-b", "-c", str(passwd), user, password], check=True, capture_output=True)
        conf = self.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        # As root, Mosquitto reads the password file after dropping to its own user, which cannot
        # enter pytest's 0700 tmp folders; `user root` keeps it (ignored when not run as root).
        keep_user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"{keep_user}{conf}password_file {passwd}\n")


@pytest.fixture
def password() -> str:
    return secrets.token_urlsafe(16)


@pytest.fixture
def broker(tmp_path: Path, password: str) -> Iterator[PasswordMosquitto]:
    server = PasswordMosquitto(tmp_path, USER, password)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def token() -> str:
    return secrets.token_hex(20)


def watch(broker: Mosquitto, password: str) -> Collector:
    """What Home Assistant sees: FaceLock's topics and its discovery, as an authenticated client."""
    return Collector(broker.host, broker.port, [f"{BASE}/#", "homeassistant/#"], auth=(USER, password))


def liveness_can_be_optional() -> bool:
    """Whether this FaceLock has `liveness.required` (asked of the installed package, in a subprocess).

    Without liveness models a recognised face unlocks only when liveness is not required; the
    models are not in the test data, so the unlock test turns the requirement off where it exists.
    """
    probe = "from facelock_mqtt.settings import LivenessSettings as L; print('required' in L.model_fields)"
    # cwd "/": `-c` puts the working folder first on sys.path, and this must see what `facelock` sees.
    result = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"cannot inspect the liveness settings: {result.stderr.strip()[-400:]}"
    return result.stdout.strip() == "True"


def addon_options(tmp_path: Path, user: dict[str, Any]) -> Path:
    """/data/options.json: config.yaml's defaults and the user's options, validated as the Supervisor does."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    user = dict(user)
    live_optional = liveness_can_be_optional()
    schema_has_it = "required" in CONFIG["schema"].get("liveness", {})
    if live_optional and schema_has_it:
        user["liveness"] = {**CONFIG["options"]["liveness"], "required": False}
    path = options_file(data, user)
    if live_optional and not schema_has_it:
        # Not an add-on option (yet): written past the Supervisor's validation, which would drop it.
        options = json.loads(path.read_text())
        options.setdefault("liveness", {})["required"] = False
        path.write_text(json.dumps(options))
    return path


class Addon:
    """`addon/run.sh` as the container's command, with its stderr collected line by line."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(ROOT / "addon" / "run.sh")], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float) -> None:
        wait_until(lambda: text in self.log or self.proc.poll() is not None, timeout, f"{text!r} in the log")
        assert text in self.log, f"exited {self.proc.returncode} before logging {text!r}:\n{self.log}"

    def wait_online(self, collector: Collector, timeout: float = START_TIMEOUT_S) -> None:
        """Until FaceLock says `online`; fails at once, with the log, if it exits instead."""
        topic = f"{BASE}/availability"
        wait_until(lambda: b"online" in collector.payloads(topic) or self.proc.poll() is not None, timeout, "online")
        assert self.proc.poll() is None, f"exited {self.proc.returncode} during start:\n{self.log}"

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return code

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as the Supervisor stops an add-on; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)  # it ends at the pipe's end of file; then the pipe can be closed
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def run_addon() -> Iterator[Any]:
    started: list[Addon] = []

    def start(env: dict[str, str]) -> Addon:
        started.append(Addon(env))
        return started[-1]

    yield start
    for addon in started:
        addon.kill()


def supervisor_env(tmp_path: Path, options: Path, token: str, url: str) -> dict[str, str]:
    """The add-on container's environment as the Supervisor starts it."""
    return addon_env(tmp_path, options, SUPERVISOR_TOKEN=token, FACELOCK_SUPERVISOR_URL=url)


def enroll(env: dict[str, str], shared_data: Path, identity: str, session: str) -> None:
    """`facelock enroll` in the add-on's environment (/data), as a user would from the add-on's shell."""
    frames = [str(p) for p in nuaa_frames(shared_data, identity, session)[:3]]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "facelock"), "enroll", identity, *frames],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def discovery_topic(collector: Collector) -> str:
    (topic,) = {m.topic for m in collector.messages if m.topic.startswith("homeassistant/lock/")}
    return topic


def lock_states(collector: Collector) -> list[str]:
    return [p.decode() for p in collector.payloads(f"{BASE}/{DOOR}/lock/state")]


def test_supervisor_start_serves_home_assistant_and_an_enrolled_face_unlocks(
    tmp_path, shared_data, broker, password, token, run_addon
):
    clip = write_clip(nuaa_frames(shared_data, "s0001", "02"), tmp_path / "s0001_02.avi", fps=5.0)
    options = addon_options(tmp_path, {"cameras": [{"name": DOOR, "url": str(clip), "fps": 10.0}]})
    with SupervisorStandin(token, mqtt_answer(broker.host, broker.port, USER, password)) as supervisor:
        env = supervisor_env(tmp_path, options, token, supervisor.url)
        enroll(env, shared_data, "s0001", "01")
        collector = watch(broker, password)
        try:
            addon = run_addon(env)
            addon.wait_online(collector)
            # The clip plays once from the start: a recognised face unlocks, then the door relocks.
            collector.wait_for(f"{BASE}/{DOOR}/lock/state", b"UNLOCKED", timeout=60)
            relock = CONFIG["options"]["lock"]["relock_s"]
            wait_until(lambda: lock_states(collector)[-1] == "LOCKED", relock + 10, "the door to relock")
            assert addon.terminate() == 0, addon.log
            wait_until(lambda: collector.payloads(f"{BASE}/availability")[-1:] == [b"offline"], 10, "offline")
        finally:
            collector.close()
        # Exactly one MQTT request, with the add-on's own token as a bearer token.
        assert supervisor.requests == [("/services/mqtt", f"Bearer {token}", 200)]

    discovery = [json.loads(m.payload) for m in collector.messages if m.topic.startswith("homeassistant/lock/")]
    assert [d["command_topic"] for d in discovery] == [f"{BASE}/{DOOR}/lock/set"]
    assert discovery[0]["state_topic"] == f"{BASE}/{DOOR}/lock/state"
    late = Collector(broker.host, broker.port, ["homeassistant/lock/#"], auth=(USER, password))
    try:  # retained: Home Assistant started after FaceLock still finds the lock
        assert late.wait_for(discovery_topic(collector), timeout=5)[0].retain
    finally:
        late.close()
    states = lock_states(collector)
    assert states[0] == "LOCKED" and "UNLOCKED" in states and states[-1] == "LOCKED", states
    assert set(states) <= {"LOCKED", "UNLOCKING", "UNLOCKED"}, states
    events = [json.loads(p) for p in collector.payloads(f"{BASE}/{DOOR}/event")]
    recognized = [e for e in events if e["event_type"] == "recognized"]
    assert recognized and recognized[0]["person"] == "s0001", events
    assert recognized[0]["score"] > recognized[0]["threshold"]
    assert collector.payloads(f"{BASE}/availability")[-1] == b"offline"
    log = addon.log
    assert "no SUPERVISOR_TOKEN" not in log and "Traceback" not in log, log
    assert password not in log and token not in log, "a secret reached the log"


def test_supervisor_answer_without_credentials_is_refused_by_the_broker_and_the_door_stays_locked(
    tmp_path, broker, password, token, run_addon
):
    options = addon_options(tmp_path, {"cameras": [{"name": DOOR, "mqtt_topic": "frigate/front_door/snapshot"}]})
    collector = watch(broker, password)
    try:
        with SupervisorStandin(token, mqtt_answer(broker.host, broker.port)) as supervisor:
            addon = run_addon(supervisor_env(tmp_path, options, token, supervisor.url))
            addon.wait_for_log("refused the connection", START_TIMEOUT_S)
            time.sleep(1)  # a broker that let it in would have seen `online` by now
            assert addon.proc.poll() is None, "fails secure by waiting for the broker, not by crashing"
            assert addon.terminate() == 0, addon.log
    finally:
        collector.close()
    assert "not authori" in addon.log.lower(), addon.log
    assert not [m for m in collector.messages if m.topic.startswith((f"{BASE}/", "homeassistant/lock/"))]
    assert token not in addon.log and "Traceback" not in addon.log


def test_a_wrong_token_stops_the_start_with_the_supervisors_refusal(tmp_path, broker, password, token, run_addon):
    options = addon_options(tmp_path, {"cameras": [{"name": DOOR, "mqtt_topic": "frigate/front_door/snapshot"}]})
    wrong = secrets.token_hex(20)
    with SupervisorStandin(token, mqtt_answer(broker.host, broker.port, USER, password)) as supervisor:
        addon = run_addon(supervisor_env(tmp_path, options, wrong, supervisor.url))
        assert addon.wait(START_TIMEOUT_S) == 2, addon.log
        assert supervisor.requests == [("/services/mqtt", f"Bearer {wrong}", 403)]
    errors = [line for line in addon.lines if line.startswith("facelock: error:")]
    assert len(errors) == 1 and "Supervisor refused" in errors[0] and "403" in errors[0], addon.log
    assert wrong not in addon.log and "Traceback" not in addon.log


def test_an_unreachable_supervisor_stops_the_start_naming_the_address(tmp_path, broker, token, run_addon):
    options = addon_options(tmp_path, {"cameras": [{"name": DOOR, "mqtt_topic": "frigate/front_door/snapshot"}]})
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    addon = run_addon(supervisor_env(tmp_path, options, token, url))
    assert addon.wait(START_TIMEOUT_S) == 2, addon.log
    errors = [line for line in addon.lines if line.startswith("facelock: error:")]
    assert len(errors) == 1 and f"{url}/services/mqtt" in errors[0], addon.log
    assert token not in addon.log and "Traceback" not in addon.log
