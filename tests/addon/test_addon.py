"""The Home Assistant add-on packaging: manifest, options and schema, translations, docs.

The Supervisor skips what it cannot read with only a warning in its own log (an add-on missing
from the store, a translation file ignored, an option dropped), so its rules are checked here,
transcribed from its source (supervisor/apps/options.py and apps/validate.py). The options a
user saves must load with `Settings`, which forbids unknown keys. The image and the start
script are checked in test_addon_image.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from facelock_mqtt.errors import ConfigError
from facelock_mqtt.settings import CameraSettings, load_settings
from facelock_mqtt.tools import addon_schema
from facelock_mqtt.tools.addon_schema import IMAGE_LIVENESS

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())

# supervisor/apps/options.py
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:|bool|email|url|port|device(?:\((?P<filter>subsystem=[a-z]+)\))?"
    r"|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?"
    r"|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?"
    r"|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?"
    r"|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?"
    r"|match\((?P<match>.*)\)|list\((?P<list>.+)\))\??$"
)
# supervisor/apps/validate.py and apps/const.py
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_SERVICE = re.compile(r"^(?:mqtt|mysql):(?:provide|want|need)$")
RE_VOLUME = re.compile(
    r"^(data|config|ssl|addons|backup|share|media|homeassistant_config|all_addon_configs|addon_config)(?::(rw|ro))?$"
)
# Keys the Supervisor reads with the default it applies; the add-on linter flags a key set to it.
SUPERVISOR_DEFAULTS: dict[str, Any] = {
    "startup": "application", "boot": "auto", "init": True, "advanced": False, "stage": "stable",
    "ingress": False, "ingress_port": 8099, "ingress_stream": False, "panel_icon": "mdi:puzzle",
    "panel_admin": True, "host_network": False, "host_pid": False, "host_ipc": False,
    "host_uts": False, "host_dbus": False, "udev": False, "tmpfs": False, "apparmor": True,
    "full_access": False, "audio": False, "video": False, "gpio": False, "usb": False, "uart": False,
    "devicetree": False, "kernel_modules": False, "realtime": False, "hassio_api": False,
    "hassio_role": "default", "homeassistant_api": False, "stdin": False, "legacy": False,
    "docker_api": False, "auth_api": False, "backup": "hot", "timeout": 10, "journald": False,
    "options": {}, "schema": {}, "map": [], "ulimits": {}, "breaking_versions": [],
}  # fmt: skip
OTHER_KEYS = {
    "name", "version", "slug", "description", "arch", "machine", "url", "ports", "ports_description",
    "watchdog", "webui", "ingress_entry", "panel_title", "homeassistant", "devices", "environment",
    "privileged", "services", "discovery", "backup_exclude", "backup_pre", "backup_post", "image",
}  # fmt: skip


# --- the Supervisor's option validation, as it writes /data/options.json -------------------------


def check_value(typ: str, value: Any, key: str) -> Any:
    """One option value against its schema type; returns the value the Supervisor stores."""
    match = RE_SCHEMA_ELEMENT.match(typ)
    assert match, f"{key}: unknown schema type {typ!r}"
    low = next((float(match[g]) for g in ("i_min", "f_min") if match[g]), None)
    high = next((float(match[g]) for g in ("i_max", "f_max") if match[g]), None)
    if typ.startswith(("int", "float")):
        assert not isinstance(value, bool), f"{key}: {value!r} is not a number"
        number = int(value) if typ.startswith("int") else float(value)
        assert (low is None or number >= low) and (high is None or number <= high), f"{key}: {value} out of {typ}"
        return number
    if typ.startswith("bool"):
        assert isinstance(value, bool), f"{key}: {value!r} is not a bool"
    elif typ.startswith(("str", "password")):
        assert isinstance(value, str), f"{key}: {value!r} is not a string"
    elif typ.startswith("match"):
        assert re.match(match["match"], str(value)), f"{key}: {value!r} does not match {typ}"
    elif typ.startswith("list"):
        assert str(value) in match["list"].split("|"), f"{key}: {value!r} is not one of {typ}"
    else:
        raise AssertionError(f"{key}: FaceLock uses no {typ} options")
    return value


def check_options(schema: dict[str, Any], options: dict[str, Any], where: str = "options") -> dict[str, Any]:
    """Options against a schema; stricter than the Supervisor, which drops unknown keys silently."""
    unknown = set(options) - set(schema)
    assert not unknown, f"{where}: no schema entry for {sorted(unknown)}"
    result = {}
    for key, value in options.items():
        typ = schema[key]
        if isinstance(typ, list):
            assert isinstance(value, list), f"{where}.{key}: not a list"
            result[key] = [check_element(typ[0], item, f"{where}.{key}[]") for item in value]
        else:
            result[key] = check_element(typ, value, f"{where}.{key}")
    for key, typ in schema.items():
        if key not in result:
            assert isinstance(typ, list) or (isinstance(typ, str) and typ.endswith("?")), f"{where}: {key} missing"
    return result


def check_element(typ: Any, value: Any, where: str) -> Any:
    if isinstance(typ, dict):
        assert isinstance(value, dict), f"{where}: not a dict"
        return check_options(typ, value, where)
    return check_value(typ, value, where)


def options_file(tmp_path: Path, user: dict[str, Any] | None = None) -> Path:
    """What the Supervisor writes: defaults merged with the user's options, validated, as JSON."""
    merged = {**CONFIG["options"], **(user or {})}
    path = tmp_path / "options.json"
    path.write_text(json.dumps(check_options(CONFIG["schema"], merged)))
    return path


@pytest.fixture
def no_facelock_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("FACELOCK_"):
            monkeypatch.delenv(name)
    return monkeypatch


# --- manifest ------------------------------------------------------------------------------------


def test_manifest_has_the_required_keys_and_values():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert CONFIG["version"] == pyproject["project"]["version"] == "0.1.0"
    assert CONFIG["slug"] == "facelock" and RE_SLUG.match(CONFIG["slug"])
    assert CONFIG["name"] and CONFIG["description"]
    assert set(CONFIG["arch"]) == {"amd64", "aarch64"} and len(CONFIG["arch"]) == 2
    assert CONFIG["init"] is False
    assert "mqtt:need" in CONFIG["services"] and all(RE_SERVICE.match(s) for s in CONFIG["services"])
    assert "addon_config:rw" in CONFIG["map"] and all(RE_VOLUME.match(m) for m in CONFIG["map"])
    assert "url" not in CONFIG or urlparse(CONFIG["url"]).scheme == "https"


def test_manifest_uses_only_known_keys_and_none_at_its_default():
    unknown = set(CONFIG) - set(SUPERVISOR_DEFAULTS) - OTHER_KEYS
    assert not unknown, f"the Supervisor does not know {sorted(unknown)}"
    at_default = [key for key, default in SUPERVISOR_DEFAULTS.items() if key in CONFIG and CONFIG[key] == default]
    assert not at_default, f"remove keys set to the Supervisor's default: {at_default}"


def test_the_repository_holds_exactly_one_addon_with_its_files_beside_it():
    # The Supervisor finds add-ons by globbing `**/config.{json,yaml,yml}` outside dot folders and
    # `rootfs`, then reads DOCS.md, CHANGELOG.md, apparmor.txt, translations/ next to each.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    manifests = [
        p for p in listed
        if re.fullmatch(r"config\.(json|ya?ml)", Path(p).name)
        and not any(part.startswith(".") or part == "rootfs" for part in Path(p).parts)
    ]  # fmt: skip
    assert manifests == ["config.yaml"]
    for name in ("Dockerfile", "DOCS.md", "CHANGELOG.md", "apparmor.txt", "translations/en.yaml"):
        assert (ROOT / name).is_file(), f"{name} must sit next to config.yaml"
    assert "## 0.1.0" in (ROOT / "CHANGELOG.md").read_text()


def test_repository_file():
    repository = yaml.safe_load((ROOT / "repository.yaml").read_text())
    assert repository["name"] and set(repository) <= {"name", "url", "maintainer"}
    assert repository.get("url") == CONFIG.get("url")  # both optional; one home when set


def test_apparmor_profile_has_one_profile_and_parses():
    text = (ROOT / "apparmor.txt").read_text()
    assert re.findall(r"^profile (\S+) ", text, re.MULTILINE) == [CONFIG["slug"]]
    parser = shutil.which("apparmor_parser") or "/usr/sbin/apparmor_parser"
    if not Path(parser).exists():  # as with Mosquitto: scripts/test.sh installs it, a skip would hide it
        pytest.fail("apparmor_parser not installed (apt-get install apparmor; scripts/test.sh does)")
    # -Q: check and compile only, never load into the kernel.
    result = subprocess.run(
        [parser, "-Q", "-K", str(ROOT / "apparmor.txt")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --- schema, options, translations, docs ---------------------------------------------------------


def schema_leaves(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    leaves = []
    for key, typ in schema.items():
        inner = typ[0] if isinstance(typ, list) else typ
        if isinstance(typ, list):
            assert len(typ) == 1 and not isinstance(inner, list), f"{key}: a list holds one type, never a list"
        if isinstance(inner, dict):
            leaves += schema_leaves(inner, f"{prefix}{key}.")
        else:
            leaves.append((prefix + key, inner))
    return leaves


def nesting(typ: Any) -> int:
    """Container levels under a top-level option: `str` 0, `{k: str}` 1, `[{k: str}]` 2."""
    if isinstance(typ, list):
        return 1 + nesting(typ[0])
    if isinstance(typ, dict):
        return 1 + max(nesting(t) for t in typ.values())
    return 0


def test_every_schema_type_is_valid_and_nesting_is_at_most_two():
    leaves = schema_leaves(CONFIG["schema"])
    assert len(leaves) == sum(max(len(fields), 1) for fields in addon_schema.EXPOSED.values())
    for key, typ in leaves:
        match = RE_SCHEMA_ELEMENT.match(typ)
        assert match, f"{key}: {typ!r} is not a Supervisor schema type"
        if match["match"]:
            re.compile(match["match"])
    deep = {key: nesting(typ) for key, typ in CONFIG["schema"].items() if nesting(typ) > 2}
    assert not deep, f"nested deeper than two levels: {deep}"
    assert nesting(CONFIG["schema"]["cameras"]) == 2


def test_options_match_the_schema_and_the_model_defaults():
    check_options(CONFIG["schema"], CONFIG["options"])
    assert CONFIG["options"]["cameras"] == []
    assert CONFIG["options"]["decision"] == {"k": 2, "n": 5, "window_s": 4.0, "cooldown_s": 5.0}
    assert "pin" not in CONFIG["options"]["lock"]  # optional and empty: no PIN until the user sets one


def test_generated_files_are_up_to_date():
    for path, text in addon_schema.generated_files().items():
        assert path.read_text() == text, f"{path.name} is stale: python -m facelock_mqtt.tools.addon_schema --write"


def test_translations_name_and_describe_every_option():
    configuration = yaml.safe_load((ROOT / "translations" / "en.yaml").read_text())["configuration"]

    def check(schema: dict[str, Any], texts: dict[str, Any], where: str) -> None:
        assert set(texts) == set(schema), f"{where}: translations and schema keys differ"
        for key, typ in schema.items():
            entry = texts[key]
            assert isinstance(entry["name"], str) and entry["name"].strip(), f"{where}.{key}: no name"
            assert isinstance(entry["description"], str) and len(entry["description"]) > 10, f"{where}.{key}"
            inner = typ[0] if isinstance(typ, list) else typ
            if isinstance(inner, dict):
                check(inner, entry["fields"], f"{where}.{key}")
            else:
                assert "fields" not in entry

    check(CONFIG["schema"], configuration, "configuration")


# --- options.json -> Settings --------------------------------------------------------------------


def documented_cameras() -> list[dict[str, Any]]:
    docs = (ROOT / "DOCS.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL) if b.startswith("cameras:"))
    return yaml.safe_load(block)["cameras"]


def test_default_options_load_as_the_model_defaults(tmp_path, no_facelock_env):
    no_facelock_env.setenv("FACELOCK_OPTIONS_FILE", str(tmp_path / "absent.json"))
    model = load_settings().model_dump()
    no_facelock_env.setenv("FACELOCK_OPTIONS_FILE", str(options_file(tmp_path)))
    settings = load_settings()
    addon = settings.model_dump()
    # The one intended difference: liveness models live in the user-visible add-on folder.
    assert addon.pop("liveness")["models"] == Path(IMAGE_LIVENESS) and model.pop("liveness")["models"] is None
    assert addon == model
    assert settings.cameras == []
    assert settings.match.target_far == CONFIG["options"]["match"]["target_far"]
    assert settings.decision.k == 2 and settings.lock.pin is None
    assert settings.liveness.models == Path(IMAGE_LIVENESS)
    assert settings.mqtt.base_topic == "facelock" and settings.mqtt.host is None


def test_documented_cameras_and_user_options_load_as_settings(tmp_path, no_facelock_env):
    user = {
        "cameras": documented_cameras(),
        "lock": {"relock_s": 8, "pin": "2468"},
        "mqtt": {"base_topic": "home/facelock"},
        "log_level": "debug",
    }
    no_facelock_env.setenv("FACELOCK_OPTIONS_FILE", str(options_file(tmp_path, user)))
    settings = load_settings()
    assert [(c.name, c.url is not None, c.mqtt_topic) for c in settings.cameras] == [
        ("front_door", True, None),
        ("back_door", False, "frigate/back_door/person/snapshot"),
    ]
    assert settings.cameras[1].fps == 2.0 and settings.cameras[0].fps == CameraSettings.model_fields["fps"].default
    assert settings.lock.relock_s == 8.0 and settings.lock.pin.get_secret_value() == "2468"
    assert settings.mqtt.base_topic == "home/facelock" and settings.log_level == "debug"


@pytest.mark.parametrize(
    ("user", "named"),
    [
        ({"match": {"target_far": 0}}, "match.target_far"),  # the Supervisor's ranges are inclusive
        ({"lock": {"relock_s": 5.0, "pin": "12"}}, "lock"),
        ({"cameras": [{"name": "door", "url": "rtsp://cam/1", "mqtt_topic": "frigate/x"}]}, "cameras"),
        ({"decision": {"k": 9, "n": 5, "window_s": 4.0, "cooldown_s": 5.0}}, "decision"),
    ],
)
def test_options_the_supervisor_accepts_but_facelock_refuses_name_the_setting(tmp_path, no_facelock_env, user, named):
    no_facelock_env.setenv("FACELOCK_OPTIONS_FILE", str(options_file(tmp_path, user)))
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_settings()


def test_an_option_unknown_to_the_model_is_refused(tmp_path, no_facelock_env):
    path = tmp_path / "options.json"
    path.write_text(json.dumps({**CONFIG["options"], "camera": []}))
    no_facelock_env.setenv("FACELOCK_OPTIONS_FILE", str(path))
    with pytest.raises(ConfigError, match="camera"):
        load_settings()


# --- what the store and a new user see (issue 11) ----------------------------------------------------

PLACEHOLDER = re.compile(r"\.example\b|example\.(com|org|net)|\.invalid\b|\.test\b|placeholder|changeme", re.IGNORECASE)


def test_manifests_carry_no_placeholder_url_or_maintainer():
    for name in ("config.yaml", "repository.yaml"):
        data = yaml.safe_load((ROOT / name).read_text())
        shown = {key: str(data[key]) for key in ("url", "maintainer") if key in data}
        assert not {k: v for k, v in shown.items() if PLACEHOLDER.search(v)}, f"{name}: {shown}"


@pytest.mark.parametrize(("name", "size"), [("icon.png", (128, 128)), ("logo.png", (250, 100))])
def test_store_images_exist_as_small_pngs(name: str, size: tuple[int, int]):
    import cv2

    path = ROOT / name
    assert path.is_file() and path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size < 20_000
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert (image.shape[1], image.shape[0]) == size
    assert image.std() > 10  # drawn, not blank


def test_backups_leave_out_the_rebuildable_bundle_and_keep_the_data(tmp_path):
    """The Supervisor drops a /data path from a backup when it matches a backup_exclude pattern
    (PurePath.match, as its tar writer does); the default bundle must, the gallery must not."""
    from pathlib import PurePosixPath

    from facelock_mqtt.models.default_bundle import default_bundle

    bundle = default_bundle(tmp_path)
    patterns = CONFIG["backup_exclude"]


    def excluded(path: str | Path) -> bool:  # an excluded folder is not descended into
        parts = PurePosixPath(path).parts
        return any(PurePosixPath("/data", *parts[: i + 1]).match(p) for i in range(len(parts)) for p in patterns)

    cached = bundle.path.relative_to(tmp_path)
    assert excluded(cached.parts[0]) and excluded(cached) and excluded(cached / "manifest.json")
    for kept in ("gallery.db", "audit.sqlite3", "lockout.json", "liveness/liveness.json", "options.json"):
        assert not excluded(kept), kept
    assert sum(f.stat().st_size for f in bundle.path.iterdir()) > 10_000_000  # what the exclusion saves


def test_docs_automation_example_is_valid_for_the_oldest_supported_home_assistant():
    """config.yaml's `homeassistant:` minimum (2024.3) knows `trigger:`/`platform:` and
    `action:`/`service:`; `triggers:`, `trigger: state`, `actions:` and `action: x.y` came in 2024.10."""
    assert CONFIG["homeassistant"] == "2024.3.0"
    docs = (ROOT / "DOCS.md").read_text()
    block = re.search(r"```yaml\n(automation:\n.*?)```", docs, re.DOTALL)
    assert block, "DOCS.md has no automation example"
    (automation,) = yaml.safe_load(block.group(1))["automation"]
    assert set(automation) == {"alias", "trigger", "action"}
    steps = automation["action"]
    triggers = automation["trigger"] + [t for step in steps for t in step.get("wait_for_trigger", [])]
    assert triggers and all("platform" in t and "trigger" not in t for t in triggers)
    calls = [step for step in steps if "wait_for_trigger" not in step]
    assert calls and all("service" in step and "action" not in step for step in calls)


def test_docs_lockout_window_agrees_with_the_setting():
    from facelock_mqtt.settings import LockoutSettings

    docs = (ROOT / "DOCS.md").read_text()
    assert LockoutSettings().window_s == 600 and "within ten minutes\n(`lockout.window_s`)" in docs
    described = LockoutSettings.model_fields["max_failures"].description
    assert "lockout.window_s (default 600 s, ten minutes)" in described and described in docs


def test_docs_ask_for_no_restart_after_enrolling():
    """The service reloads the gallery when the CLI or the panel changes it (Recognizer.matcher)."""
    docs = (ROOT / "DOCS.md").read_text()
    assert not re.search(r"[Rr]estart the add-on\**\s+after\s+enroll", docs)
    assert "picks its changes up without a restart" in docs
