"""Fuzzing (hypothesis) of every inbound MQTT payload handler and of image decoding.

Targets, each with its invariants (a broken invariant is a finding; hypothesis shrinks it):
- `parse_command` + `check_authority` (with a PIN, and with the default of no PIN and no remote
  unlock): nothing but LOCK passes unless the payload carries the PIN.
- `DoorLock.handle_command` (incl. retained): never raises; with a PIN the generator does not
  know, the relay is never released and the lock stays LOCKED; without a PIN (remote commands
  explicitly allowed) it releases only for a non-retained, well-formed UNLOCK/OPEN (an oracle written from the whitelist's docs).
- the bridge's inbound dispatch (`MqttConnection._on_message`, i.e. what paho calls) with
  messages on the lock-command, lockout-clear, snapshot and Home Assistant status topics and
  on foreign topics: no handler error, no unlock, a clear request only from a fresh `PRESS`
  and never granted without the PIN, a snapshot handed on only when fresh and non-empty.
- image decoding: `imageio.decode_image` returns a 3-channel uint8 image or raises ImageError;
  `source.decode_jpeg` never raises. Inputs: random bytes and mutated real JPEG/PNG files.

`python -m facelock_mqtt.tools.fuzz --examples 10000` (split over the targets; docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from ..errors import ImageError
from ..guards.lockout import Lockout
from ..homeassistant.bridge import HomeAssistantBridge
from ..homeassistant.lock import Command, CommandRejected, DoorLock, LockState, check_authority, parse_command
from ..pipeline.imageio import decode_image
from ..pipeline.source import MqttSnapshotSource, decode_jpeg
from ..settings import CameraSettings, LockoutSettings, LockSettings, MqttSettings

log = logging.getLogger(__name__)

# 12 random digits drawn at run time: hypothesis mines the project's source for literals, so a
# PIN written here would be "guessed" (it was, in the first run).
PIN = SecretStr(f"{random.SystemRandom().randrange(10**11, 10**12)}")
DOOR = "front"
SNAPSHOT_TOPIC = "frigate/front/snapshot"
ACTIONS = ("LOCK", "UNLOCK", "OPEN", "unlock", "Unlock", "UNLOCK ", " OPEN", "UNLOCKED", "", "None", "PRESS")
WEIGHTS = {"parse_command": 0.2, "lock": 0.2, "bridge": 0.35, "decode": 0.25}


class RecordingRelay:
    """Stands in for the door hardware and remembers every call."""

    def __init__(self, door: str = DOOR) -> None:
        self.calls: list[str] = []

    def unlock(self) -> None:
        self.calls.append("unlock")

    def lock(self) -> None:
        self.calls.append("lock")


@dataclass
class TargetReport:
    name: str
    examples: int = 0
    seconds: float = 0.0
    finding: str | None = None  # the shrunk counterexample's error, if an invariant broke
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


# --- strategies ----------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)


@st.composite
def _json_command(draw: st.DrawFn) -> bytes:
    """Shaped like Home Assistant's rendered command template, often valid, often wrong."""
    data = {"action": draw(st.sampled_from(ACTIONS) | st.sampled_from(ACTIONS) | _json_scalars)}
    if draw(st.integers(0, 2)):
        data["code"] = draw(st.text(alphabet="0123456789", max_size=14) | _json_scalars)
    if draw(st.integers(0, 3)) == 0:
        data.update(draw(st.dictionaries(st.text(max_size=8), _json_scalars, min_size=1, max_size=2)))
    text = json.dumps(data)
    return draw(st.sampled_from([text] * 4 + [text[:-1], text + "}", " " + text, text.replace('"', "'")])).encode()


def command_payloads() -> st.SearchStrategy[bytes]:
    plain = st.sampled_from(ACTIONS).map(str.encode)
    texts = st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass"))
    large = st.binary(min_size=250, max_size=400)
    # What Home Assistant sends for a user guessing the PIN: the template rendered with digits.
    guess = st.builds(
        lambda action, code: json.dumps({"action": action, "code": code}).encode(),
        st.sampled_from(["UNLOCK", "OPEN"]), st.text("0123456789", min_size=1, max_size=14),
    )  # fmt: skip
    return st.one_of(plain, _json_command(), guess, texts, st.binary(max_size=300), large)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A real image file with a few byte-level edits, often in its headers."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        limit = min(len(data), 700) if draw(st.booleans()) else len(data)  # headers first
        at = draw(st.integers(0, max(limit - 1, 0)))
        op = draw(st.sampled_from(("flip", "set", "cut", "insert", "truncate", "ff")))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "ff" and data:
            data[at : at + 2] = b"\xff\xff"  # huge lengths and dimensions in marker fields
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "truncate":
            del data[at:]
    return bytes(data)


def image_payloads(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    head = st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF89a", b"RIFF"])
    prefixed = st.tuples(head, st.binary(max_size=200)).map(b"".join)
    return st.one_of(mutated(seeds), mutated(seeds), st.sampled_from(seeds), prefixed, st.binary(max_size=600))


def ha_status_payloads() -> st.SearchStrategy[bytes]:
    words = st.sampled_from(["online", "offline", "Online", "online\n", "", "birth"]).map(str.encode)
    return words | st.binary(max_size=32)


def seed_images(files: list[Path]) -> list[bytes]:
    """Real photographs as JPEG files and small ones as PNG too (plus a tiny grey JPEG) to mutate."""
    seeds = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ImageError(f"{path}: not an image")
        seeds.append(path.read_bytes())
        if max(image.shape[:2]) <= 256:  # a full-frame PNG takes 12 ms to decode; small ones test the same code
            seeds.append(cv2.imencode(".png", image)[1].tobytes())
    seeds.append(cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))[1].tobytes())
    return seeds


# --- running a target ----------------------------------------------------------------------------


def run_target(name: str, examples: int, strategy: st.SearchStrategy, check: Callable, rng_seed: int) -> TargetReport:
    """Run `check` on `examples` generated inputs; an AssertionError (or any unexpected
    exception) is a finding, reported after hypothesis has shrunk it."""
    report = TargetReport(name)

    @seed(rng_seed)
    @settings(
        max_examples=examples, database=None, deadline=None, derandomize=False,
        suppress_health_check=list(HealthCheck), print_blob=False,
    )  # fmt: skip
    @given(strategy)
    def body(value: object) -> None:
        report.examples += 1
        report.outcomes[check(value)] += 1

    start = time.perf_counter()
    try:
        body()
    except Exception as exc:  # noqa: BLE001 - hypothesis re-raises the shrunk failure, whatever it is: the finding
        report.finding = f"{type(exc).__name__}: {exc}"
        log.error("fuzz %s: %s", name, report.finding)
    report.seconds = time.perf_counter() - start
    return report


# --- targets -------------------------------------------------------------------------------------


def check_parse(item: tuple[bytes, bool]) -> str:
    """The whitelist, then the authority check, with a PIN and with the default (no PIN, no
    remote unlock): in neither may anything but LOCK pass without the PIN."""
    payload, with_pin = item
    settings = LockSettings(pin=PIN) if with_pin else LockSettings()
    try:
        command, code = parse_command(payload)
        if command is not Command.LOCK:
            check_authority(code, settings)
    except CommandRejected as exc:
        return f"rejected:{exc.reason}"
    if not isinstance(command, Command):
        raise TypeError(f"parse_command returned {command!r}")
    if command is not Command.LOCK:
        raise AssertionError(f"{payload!r} passed the authority check (PIN set: {with_pin})")
    return f"accepted:{command.value}"


def authorised_without_pin(payload: bytes, retained: bool) -> bool:
    """The whitelist as documented: a fresh `UNLOCK`/`OPEN`, bare or as {"action", "code"} JSON."""
    if retained:
        return False
    if payload in (b"UNLOCK", b"OPEN"):
        return True
    if not payload.startswith(b"{"):  # "exactly": no leading whitespace
        return False
    try:
        data = json.loads(payload.decode("utf-8"))
    except ValueError:
        return False
    return (
        isinstance(data, dict) and set(data) <= {"action", "code"} and data.get("action") in ("UNLOCK", "OPEN")
        and isinstance(data.get("code", ""), str | None)
    )  # fmt: skip


def lock_checker() -> tuple[Callable[[tuple[bytes, bool, bool]], str], Callable[[], None]]:
    """A PIN lock and a lock explicitly open to remote commands without a PIN, each with its
    relay; returns (check, close)."""
    relays = {True: RecordingRelay(), False: RecordingRelay()}
    quick = LockSettings(relock_s=1.0, unlocking_s=0.0)
    locks = {
        True: DoorLock(DOOR, quick.model_copy(update={"pin": PIN}), relays[True]),
        False: DoorLock(DOOR, quick.model_copy(update={"allow_remote_without_pin": True}), relays[False]),
    }

    def check(item: tuple[bytes, bool, bool]) -> str:
        payload, retained, with_pin = item
        lock, relay = locks[with_pin], relays[with_pin]
        relay.calls.clear()
        command = lock.handle_command(payload, retained=retained)
        released = "unlock" in relay.calls
        if with_pin and (released or lock.state is not LockState.LOCKED):
            raise AssertionError(f"{payload!r} (retained={retained}) released a PIN lock; state {lock.state}")
        if not with_pin and released != authorised_without_pin(payload, retained):
            raise AssertionError(f"{payload!r} (retained={retained}): released={released}, command {command}")
        if released:
            lock.lock("fuzz reset")
        return "ignored" if command is None else f"done:{command.value}"

    return check, lambda: [lock.close() for lock in locks.values()]


@dataclass
class BridgeRig:
    """A real bridge (not connected: state updates are skipped, commands still reach the locks),
    a real snapshot source, a real lockout behind the clear button."""

    bridge: HomeAssistantBridge
    relay: RecordingRelay
    source: MqttSnapshotSource
    clears: list[str | int]  # one entry per clear request: a refusal reason, or lockouts cleared

    @classmethod
    def build(cls, state_dir: Path, mqtt: MqttSettings | None = None) -> BridgeRig:
        """Unconnected unless `mqtt` names a broker (then call `bridge.start()`)."""
        relay = RecordingRelay()
        mqtt = mqtt or MqttSettings(host="127.0.0.1", port=1, client_id="facelock_fuzz")
        bridge = HomeAssistantBridge(mqtt, [DOOR], LockSettings(pin=PIN), lambda door: relay)
        source = MqttSnapshotSource(CameraSettings(name=DOOR, mqtt_topic=SNAPSHOT_TOPIC, fps=60.0))
        bridge.on_snapshot(SNAPSHOT_TOPIC, source.push)
        lockout, clears = Lockout(LockoutSettings(), Path(state_dir) / "lockout.json"), []
        # Each clear request's outcome: the refusal's reason, or how many lockouts it cleared.
        bridge.on_lockout_clear(DOOR, lambda refusal: clears.append(refusal or len(lockout.clear(DOOR))))
        return cls(bridge, relay, source, clears)

    @property
    def topics(self) -> list[str]:
        t = self.bridge.topics
        return [t.lock_command(DOOR), t.lockout_clear(DOOR), SNAPSHOT_TOPIC, t.ha_status, t.lock_state(DOOR), "#", "x"]

    def deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        message = paho.MQTTMessage(topic=topic.encode())
        message.payload, message.retain = payload, retained
        self.bridge.mqtt._on_message(None, None, message)  # what paho calls for an inbound message

    def check(self, item: tuple[str, bytes, bool]) -> str:
        topic, payload, retained = item
        errors, clears, read = self.bridge.mqtt.stats["handler_errors"], len(self.clears), self.source.stats.frames_read
        self.deliver(topic, payload, retained)
        if self.bridge.mqtt.stats["handler_errors"] != errors:
            raise AssertionError(f"a handler raised on {topic} {payload[:40]!r}")
        if "unlock" in self.relay.calls or self.bridge.locks[DOOR].state is not LockState.LOCKED:
            raise AssertionError(f"{topic} {payload[:40]!r} unlocked the door")
        fresh = not retained
        if (len(self.clears) > clears) != (
            topic == self.bridge.topics.lockout_clear(DOOR) and fresh and payload == b"PRESS"
        ):
            raise AssertionError(f"lockout clear on {topic} {payload!r} retained={retained}")
        if any(not isinstance(outcome, str) for outcome in self.clears):
            raise AssertionError(f"{topic} {payload!r} cleared a lockout without the PIN")
        if (self.source.stats.frames_read > read) != (topic == SNAPSHOT_TOPIC and fresh and bool(payload)):
            raise AssertionError(f"snapshot hand-over wrong for {topic} retained={retained} ({len(payload)} bytes)")
        return topic.rsplit("/", 1)[-1] if topic in self.topics else "other topic"

    def close(self) -> None:
        self.source.stop()
        self.bridge.stop()


def any_payload(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(command_payloads(), image_payloads(seeds), ha_status_payloads(), st.just(b"PRESS"))


def bridge_messages(rig: BridgeRig, seeds: list[bytes]) -> st.SearchStrategy[tuple[str, bytes, bool]]:
    topic = st.sampled_from(rig.topics) | st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t)
    return st.tuples(topic, any_payload(seeds), st.booleans())


def check_decode(payload: bytes) -> str:
    try:
        image = decode_image(payload)
    except ImageError:
        outcome = "refused"
    else:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise AssertionError(f"decode_image returned {type(image).__name__} {getattr(image, 'shape', None)}")
        outcome = "decoded"
    snapshot, why = decode_jpeg(payload)  # the snapshot path: must never raise
    if (snapshot is None) == (why == ""):
        raise AssertionError(f"decode_jpeg gave image={snapshot is not None} with reason {why!r}")
    return outcome + ("" if snapshot is None else "+snapshot")


# --- the whole run -------------------------------------------------------------------------------


def fuzz_all(examples: int, seed_files: list[Path], work: Path, rng_seed: int = 0) -> list[TargetReport]:
    """Every target, `examples` split over them by WEIGHTS."""
    counts = {name: max(1, round(examples * w)) for name, w in WEIGHTS.items()}
    seeds = seed_images(seed_files)
    reports = [
        run_target(
            "parse_command",
            counts["parse_command"],
            st.tuples(command_payloads(), st.booleans()),
            check_parse,
            rng_seed,
        )
    ]
    check, close = lock_checker()
    try:
        items = st.tuples(command_payloads(), st.booleans(), st.booleans())
        reports.append(run_target("lock", counts["lock"], items, check, rng_seed))
    finally:
        close()
    rig = BridgeRig.build(work)
    try:
        reports.append(run_target("bridge", counts["bridge"], bridge_messages(rig, seeds), rig.check, rng_seed))
    finally:
        rig.close()
    reports.append(run_target("decode", counts["decode"], image_payloads(seeds), check_decode, rng_seed))
    return reports


def default_seed_files(shared: Path) -> list[Path]:
    lfw = sorted((shared / "lfw_aligned_112").glob("A*/*.jpg"))[:2]
    nuaa = sorted((shared / "nuaa" / "live").glob("*/*.jpg"))[:1]
    return lfw + nuaa


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facelock_mqtt.tools.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000, help="generated inputs in all")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"), help="folder of the shared face data")
    parser.add_argument("--seed", type=int, default=random.SystemRandom().randrange(2**32))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # (libjpeg/libpng still write to stderr)
    with tempfile.TemporaryDirectory() as work:
        reports = fuzz_all(args.examples, default_seed_files(args.shared), Path(work), args.seed)
    total = sum(r.examples for r in reports)
    for r in reports:
        top = ", ".join(f"{k} {v}" for k, v in r.outcomes.most_common(4))
        print(
            f"{r.name:>14}: {r.examples} inputs in {r.seconds:.1f} s ({r.per_second:.0f}/s); {r.finding or 'no finding'}; {top}"
        )
    print(f"{total} inputs, seed {args.seed}, {sum(r.finding is not None for r in reports)} finding(s)")
    if args.json is not None:
        targets = [{**asdict(r), "outcomes": dict(r.outcomes), "per_second": r.per_second} for r in reports]
        data = {"seed": args.seed, "total": total, "targets": targets}
        args.json.write_text(json.dumps(data, indent=2))
    return 1 if any(r.finding for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
