"""A door lock: its Home Assistant discovery schema, its command whitelist and its state machine.

Kept together on purpose (like Home Assistant's own `lock.py`): the payloads announced in
discovery are the only payloads accepted. The lock starts LOCKED, an unlock goes
LOCKED -> UNLOCKING -> UNLOCKED (or OPEN) and relocks by itself after `relock_s`. Any relay
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


def parse_command(payload: bytes, pin: SecretStr | None) -> Command:
    """Accept exactly `LOCK`/`UNLOCK`/`OPEN` or `{"action": ..., "code": ...}`; with a PIN set,
    UNLOCK and OPEN need the right code (LOCK never does: locking cannot open a door)."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected("too_large")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandRejected("not_utf8") from None
    if text in Command.__members__:
        command, code = Command(text), None
    elif text.startswith("{"):
        command, code = _parse_json_command(text)
    else:
        raise CommandRejected("unknown")
    if pin is not None and command is not Command.LOCK:
        if code in (None, "", "None"):  # HA renders a missing code as "None"
            raise CommandRejected("code_missing")
        if not hmac.compare_digest(code.encode(), pin.get_secret_value().encode()):
            raise CommandRejected("wrong_code")
    return command


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


StateCallback = Callable[[str, LockState], None]


class DoorLock:
    """One door's lock. Thread-safe: MQTT commands, face decisions and timers may race."""

    def __init__(self, door: str, settings: LockSettings, relay: Relay, on_state: StateCallback | None = None) -> None:
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
        self._pin_failures = 0
        self._pin_blocked_until = 0.0
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
        """A command from MQTT: whitelisted, PIN-checked, never taken from a retained message."""
        try:
            if retained:
                raise CommandRejected("retained")
            command = self._parse(payload)
        except CommandRejected as exc:
            self.rejected[exc.reason] += 1
            log.warning("door %s: ignored a lock command (%s, %d bytes)", self.door, exc.reason, len(payload))
            return None
        if command is Command.LOCK:
            self.lock("remote command")
        else:
            self._release(command, "remote command")
        return command

    def _parse(self, payload: bytes) -> Command:
        """After PIN_TRIES wrong PINs in a row, refuse remote UNLOCK/OPEN (even with the right PIN)
        for PIN_BLOCK_S, doubling on each further wrong PIN; the face path is not affected."""
        with self._mutex:
            try:
                command = parse_command(payload, self._settings.pin)
            except CommandRejected as exc:
                if exc.reason == "wrong_code":
                    self._pin_failures += 1
                    if self._pin_failures >= PIN_TRIES:
                        block = min(PIN_BLOCK_S * 2 ** min(self._pin_failures - PIN_TRIES, 6), PIN_BLOCK_MAX_S)
                        self._pin_blocked_until = time.monotonic() + block
                        log.warning(
                            "door %s: %d wrong PINs; remote unlock blocked %.0f s", self.door, self._pin_failures, block
                        )
                raise
            if command is not Command.LOCK and self.pin_required:
                if time.monotonic() < self._pin_blocked_until:
                    raise CommandRejected("pin_blocked")
                self._pin_failures = 0
            return command

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
            self._after(self._settings.unlocking_s, lambda: self._released(target))
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
