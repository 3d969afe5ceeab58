"""A door lock: its Home Assistant discovery schema, its command whitelist and its state machine.

Kept together on purpose (like Home Assistant's own `lock.py`): the payloads announced in
discovery are the only payloads accepted. The lock starts LOCKED, an unlock goes
LOCKED -> UNLOCKING -> UNLOCKED (or OPEN), UNLOCKED following at once unless the user set an
actuation time (`unlocking_s`), and relocks by itself after `relock_s`. Any relay
error leaves the door locked (or JAMMED when locking itself fails, retried every `relock_s`).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from pydantic import SecretStr

from ..settings import LockSettings
from .topics import Topics

log = logging.getLogger(__name__)


class LockState(StrEnum):
    LOCKED = "LOCKED"
    UNLOCKING = "UNLOCKING"
    UNLOCKED = "UNLOCKED"
    OPEN = "OPEN"
    JAMMED = "JAMMED"


class Command(StrEnum):
    LOCK = "LOCK"
    UNLOCK = "UNLOCK"
    OPEN = "OPEN"


# The PIN announced to Home Assistant; settings.LockSettings enforces the same rule.
PIN_FORMAT = r"^\d{4,12}$"
# With a PIN, Home Assistant renders this template: `value` is the payload, `code` the PIN typed.
COMMAND_TEMPLATE = '{"action": "{{ value }}", "code": "{{ code }}"}'
MAX_COMMAND_BYTES = 256
PIN_TRIES = 5  # wrong PINs in a row before remote unlock is blocked
PIN_BLOCK_S, PIN_BLOCK_MAX_S = 60.0, 3600.0
# What a refused remote action tells the user (the event on the door's event entity and the log).
REFUSALS = {
    "no_pin_set": "no PIN is set: set lock.pin (Home Assistant then asks for it), or set "
    "lock.allow_remote_without_pin: true to let any MQTT client that can publish here do this",
    "code_missing": "this door needs its PIN",
    "wrong_code": "wrong PIN",
    "pin_blocked": "too many wrong PINs: remote unlock is blocked for a while",
}


def lock_discovery(topics: Topics, door: str, unique_id: str, pin_required: bool) -> dict[str, Any]:
    """The entity part of the lock's discovery config (device/origin/availability are added by the caller)."""
    config: dict[str, Any] = {
        "name": None,  # the device's name: avoids `lock.front_door_front_door` in older HA
        "unique_id": unique_id,
        "command_topic": topics.lock_command(door),
        "state_topic": topics.lock_state(door),
        "payload_lock": Command.LOCK.value,
        "payload_unlock": Command.UNLOCK.value,
        "payload_open": Command.OPEN.value,
        "state_locked": LockState.LOCKED.value,
        "state_unlocking": LockState.UNLOCKING.value,
        "state_unlocked": LockState.UNLOCKED.value,
        "state_open": LockState.OPEN.value,
        "state_jammed": LockState.JAMMED.value,
        "optimistic": False,
        "retain": False,  # commands are never retained
        "qos": 1,
    }
    if pin_required:
        config["code_format"] = PIN_FORMAT
        config["command_template"] = COMMAND_TEMPLATE
    return config


class CommandRejected(ValueError):
    """An inbound lock command is not on the whitelist; `reason` is a short counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_command(payload: bytes) -> tuple[Command, str | None]:
    """The whitelist: exactly `LOCK`/`UNLOCK`/`OPEN` or `{"action": ..., "code": ...}`."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected("too_large")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandRejected("not_utf8") from None
    if text in Command.__members__:
        return Command(text), None
    if text.startswith("{"):
        return _parse_json_command(text)
    raise CommandRejected("unknown")


def parse_clear(payload: bytes) -> str | None:
    """The lockout-clear button's `PRESS`, or `{"action": "PRESS", "code": "<PIN>"}` from an
    automation when a PIN is set; returns the code (None for a bare PRESS)."""
    if payload == b"PRESS":
        return None
    if len(payload) > MAX_COMMAND_BYTES or not payload.startswith(b"{"):
        raise CommandRejected("unknown")
    try:
        data = json.loads(payload)
    except ValueError:
        raise CommandRejected("bad_json") from None
    if not isinstance(data, dict) or data.get("action") != "PRESS" or not set(data) <= {"action", "code"}:
        raise CommandRejected("bad_fields")
    code = data.get("code")
    if code is not None and not isinstance(code, str):
        raise CommandRejected("bad_fields")
    return code


def check_authority(code: str | None, settings: LockSettings) -> None:
    """Whether a remote action that can open the door (UNLOCK, OPEN, clearing a lockout) may
    proceed: with a PIN set, only with the right code; without one, only when the user has
    explicitly allowed remote actions without a PIN. LOCK never needs authority."""
    if settings.pin is None:
        if not settings.allow_remote_without_pin:
            raise CommandRejected("no_pin_set")
        return
    if code in (None, "", "None"):  # HA renders a missing code as "None"
        raise CommandRejected("code_missing")
    if not hmac.compare_digest(code.encode(), settings.pin.get_secret_value().encode()):
        raise CommandRejected("wrong_code")


def _parse_json_command(text: str) -> tuple[Command, str | None]:
    try:
        data = json.loads(text)
    except ValueError:
        raise CommandRejected("bad_json") from None
    if not isinstance(data, dict) or "action" not in data or not set(data) <= {"action", "code"}:
        raise CommandRejected("bad_fields")
    action, code = data["action"], data.get("code")
    if not isinstance(action, str) or action not in Command.__members__:
        raise CommandRejected("unknown")
    if code is not None and not isinstance(code, str):
        raise CommandRejected("bad_fields")
    return Command(action), code


class Relay(Protocol):
    """The physical door: energise to release (`unlock`), de-energise to secure (`lock`)."""

    def unlock(self) -> None: ...

    def lock(self) -> None: ...


class PinStore(Protocol):
    """Keeps a door's wrong-PIN count and block (wall-clock end) across restarts (the lockout
    guard's state file); without one, a restart would reset the guessing block."""

    def pin_state(self, door: str) -> tuple[int, float]: ...

    def save_pin_state(self, door: str, failures: int, blocked_until: float) -> None: ...


StateCallback = Callable[[str, LockState], None]
RefusalCallback = Callable[[str, str, str], None]  # (door, action, reason key)


class DoorLock:
    """One door's lock. Thread-safe: MQTT commands, face decisions and timers may race."""

    def __init__(
        self,
        door: str,
        settings: LockSettings,
        relay: Relay,
        on_state: StateCallback | None = None,
        pin_store: PinStore | None = None,
        on_refused: RefusalCallback | None = None,
    ) -> None:
        self.door = door
        self.rejected: Counter[str] = Counter()
        self._settings = settings
        self._relay = relay
        self._on_state = on_state
        self._mutex = threading.RLock()
        self._state = LockState.LOCKED
        self._generation = 0  # bumped on every lock/unlock so that earlier timers do nothing
        self._timer: threading.Timer | None = None
        self._closed = False
        self._pin_store = pin_store
        self._on_refused = on_refused
        self._pin_failures, self._pin_blocked_until = pin_store.pin_state(door) if pin_store else (0, 0.0)
        self.lock("start")  # fail secure: whatever the relay was doing, start locked

    @property
    def state(self) -> LockState:
        return self._state

    @property
    def pin_required(self) -> bool:
        return self._settings.pin is not None

    def reconfigure(self, settings: LockSettings) -> None:
        """Apply new relock/unlocking times and PIN; the current state is kept."""
        with self._mutex:
            self._settings = settings

    def unlock_for(self, person: str, reason: str = "recognized") -> bool:
        """The face-decision path: release the door for `person`; False if it stayed locked."""
        return self._release(Command.UNLOCK, f"{person} ({reason})")

    def handle_command(self, payload: bytes, retained: bool = False) -> Command | None:
        """A command from MQTT: whitelisted, authority-checked, never taken from a retained message."""
        try:
            if retained:
                raise CommandRejected("retained")
            command, code = parse_command(payload)
            if command is not Command.LOCK:
                self.authorize(code, command.value)
        except CommandRejected as exc:
            self.rejected[exc.reason] += 1
            log.warning("door %s: ignored a lock command (%s, %d bytes)", self.door, exc.reason, len(payload))
            return None
        if command is Command.LOCK:
            self.lock("remote command")
        else:
            self._release(command, "remote command")
        return command

    def authorize(self, code: str | None, action: str) -> None:
        """Raise CommandRejected unless a remote `action` that can open the door may proceed.

        After PIN_TRIES wrong PINs in a row, even the right PIN is refused for PIN_BLOCK_S,
        doubling on each further wrong PIN; the count and block survive restarts (PinStore).
        The face path is never affected. Every refusal is reported to `on_refused`.
        """
        try:
            with self._mutex:
                self._authorize(code)
        except CommandRejected as exc:
            if exc.reason in REFUSALS and self._on_refused is not None:
                self._on_refused(self.door, action, exc.reason)
            raise

    def _authorize(self, code: str | None) -> None:
        if self.pin_required and time.time() < self._pin_blocked_until:
            raise CommandRejected("pin_blocked")
        try:
            check_authority(code, self._settings)
        except CommandRejected as exc:
            if exc.reason == "wrong_code":
                self._pin_failures += 1
                if self._pin_failures >= PIN_TRIES:
                    block = min(PIN_BLOCK_S * 2 ** min(self._pin_failures - PIN_TRIES, 6), PIN_BLOCK_MAX_S)
                    self._pin_blocked_until = time.time() + block
                    log.warning("door %s: %d wrong PINs; remote unlock blocked %.0f s", self.door, self._pin_failures, block)
                self._save_pin_state()
            raise
        if self._pin_failures:
            self._pin_failures = 0
            self._save_pin_state()

    def _save_pin_state(self) -> None:
        if self._pin_store is not None:
            self._pin_store.save_pin_state(self.door, self._pin_failures, self._pin_blocked_until)

    def lock(self, why: str = "") -> bool:
        """Secure the door now; cancels any pending relock. False (state JAMMED) if the relay failed."""
        with self._mutex:
            self._cancel_timer()
            try:
                self._relay.lock()
            except Exception:
                log.exception(
                    "door %s: relay failed to lock (%s); retrying in %.0f s", self.door, why, self._settings.relock_s
                )
                self._set(LockState.JAMMED)
                self._after(self._settings.relock_s, lambda: self.lock("retry"))
                return False
            self._set(LockState.LOCKED)
            return True

    def close(self) -> None:
        """Lock the door and stop all timers (service shutdown)."""
        with self._mutex:
            self.lock("shutdown")
            self._closed = True
            self._cancel_timer()

    def _release(self, command: Command, who: str) -> bool:
        target = LockState.OPEN if command is Command.OPEN else LockState.UNLOCKED
        with self._mutex:
            if self._closed:
                return False
            if self._state in (LockState.UNLOCKED, LockState.OPEN):
                if target is LockState.OPEN:
                    self._set(target)
                self._after(self._settings.relock_s, lambda: self.lock("relock"))  # restart the window
                return True
            if self._state is LockState.UNLOCKING:
                return True
            log.info("door %s: %s for %s", self.door, command.value.lower(), who)
            try:
                self._relay.unlock()
            except Exception:
                log.exception("door %s: relay failed to unlock; keeping the door locked", self.door)
                self.lock("relay failure")
                return False
            self._set(LockState.UNLOCKING)
            if self._settings.unlocking_s > 0:  # the user's actuation time for a slow strike
                self._after(self._settings.unlocking_s, lambda: self._released(target))
            else:  # no hold: UNLOCKED goes out right behind UNLOCKING, not after a timer thread starts
                self._released(target)
            return True

    def _released(self, target: LockState) -> None:
        self._set(target)
        self._after(self._settings.relock_s, lambda: self.lock("relock"))

    def _set(self, state: LockState) -> None:
        self._state = state
        if self._on_state is None:
            return
        try:
            self._on_state(self.door, state)
        except Exception:  # publishing must never stop the state machine
            log.exception("door %s: could not report state %s", self.door, state.value)

    def _after(self, delay: float, action: Callable[[], object]) -> None:
        """Run `action` after `delay` unless another lock/unlock happened in between."""
        self._cancel_timer()
        generation = self._generation

        def fire() -> None:
            with self._mutex:
                if generation == self._generation and not self._closed:
                    action()

        self._timer = threading.Timer(delay, fire)
        self._timer.daemon = True
        self._timer.start()

    def _cancel_timer(self) -> None:
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
