"""Lockout after repeated failed attempts, per door, persisted so that a reboot does not reset it.

`max_failures` failed attempts (denied or spoof suspected) within `window_s` lock the door out of
face attempts for `base_s`; each further lockout doubles the length, up to `max_s`. Lengths start
again at `base_s` after a success, after `clear()` (the Home Assistant button), or once `reset_s`
has passed since the last lockout ended without a new one.

Times are wall-clock seconds (`time.time` by default, injectable for tests) because the state
must survive a restart, where a monotonic clock starts over. A clock set backwards can only
lengthen a lockout, and never past `max_s` from now. An unreadable state file fails secure:
every door starts locked out for `max_s` until cleared.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..settings import LockoutSettings
from ..storage.files import StorageError, secure_file, write_private

log = logging.getLogger(__name__)

LOCKOUT = "lockout"
LOCKOUT_CLEARED = "lockout_cleared"
STATE_FILE = "lockout.json"
_VERSION = 1
_MAX_LEVEL = 40  # 2**40 times base_s is far past any max_s


@dataclass
class _DoorState:
    failures: list[float] = field(default_factory=list)  # times of failures in the current window
    level: int = 0  # lockouts since the last reset; the next one lasts base_s * 2**level
    locked_until: float = 0.0
    last_lockout_end: float = 0.0


@dataclass(frozen=True)
class LockoutStatus:
    door: str
    locked: bool
    remaining_s: float
    until: float | None  # wall-clock end of the lockout, None when not locked
    failures: int  # failures counted in the current window
    level: int


@dataclass(frozen=True)
class LockoutEvent:
    """Something to publish on the door's event entity (and to write to the audit trail)."""

    event_type: str  # LOCKOUT or LOCKOUT_CLEARED
    door: str
    at: float
    until: float | None = None
    duration_s: float | None = None
    failures: int = 0
    level: int = 0

    def payload(self) -> dict[str, Any]:
        return asdict(self)


class Lockout:
    """Counts failed attempts per door and refuses attempts while a door is locked out."""

    def __init__(
        self, settings: LockoutSettings, state_path: Path | str, now: Callable[[], float] = time.time
    ) -> None:
        self._settings = settings
        self._path = Path(state_path)
        self._now = now
        self._lock = threading.Lock()
        self._doors: dict[str, _DoorState] = {}
        self._unknown_until = 0.0  # set when the state file is unreadable: all doors locked
        self._pins: dict[str, tuple[int, float]] = {}  # door -> (wrong PINs in a row, blocked until)
        self.save_error: str | None = None  # the last save's failure (a full disk), None once one works
        self._load()

    def status(self, door: str) -> LockoutStatus:
        """Whether `door` refuses attempts now; call before starting an attempt."""
        with self._lock:
            now = self._now()
            state = self._door(door, now)
            remaining = max(0.0, min(state.locked_until - now, self._settings.max_s))
            failures = len(self._recent(state, now))
            return LockoutStatus(
                door, remaining > 0, remaining, now + remaining if remaining else None, failures, state.level
            )

    def record_failure(self, door: str) -> LockoutEvent | None:
        """Count a denied or spoof-suspected attempt; return a LOCKOUT event if it starts a lockout."""
        with self._lock:
            now = self._now()
            state = self._door(door, now)
            if state.locked_until > now:
                return None  # attempts are refused while locked; a late result changes nothing
            if state.level and now - state.last_lockout_end >= self._settings.reset_s:
                state.level = 0
            state.failures = self._recent(state, now) + [now]
            event = None
            if len(state.failures) >= self._settings.max_failures:
                event = self._start_lockout(door, state, now)
            self._save()
            return event

    def record_success(self, door: str) -> None:
        """A recognised, live face: forget the door's failures and start lockouts again at base_s."""
        with self._lock:
            now = self._now()
            state = self._door(door, now)
            if state.locked_until > now:
                log.error("success reported for %s during a lockout; ignored", door)
                return
            self._doors[door] = _DoorState()
            self._save()

    def clear(self, door: str | None = None) -> list[LockoutEvent]:
        """End the lockout and forget the failures of `door` (all doors when None)."""
        with self._lock:
            now = self._now()
            doors = [door] if door is not None else sorted(self._doors)
            events = [
                LockoutEvent(LOCKOUT_CLEARED, d, now)
                for d in doors
                if self._door(d, now).locked_until > now
            ]
            for d in doors:
                self._doors[d] = _DoorState()
            if door is None:
                self._unknown_until = 0.0
            self._save()
            return events

    # --- the lock's PIN-guessing block (homeassistant.lock.PinStore), kept in the same file ---

    def pin_state(self, door: str) -> tuple[int, float]:
        """(wrong PINs in a row, wall-clock end of the block) of `door`, as last saved."""
        with self._lock:
            return self._pins.get(door, (0, 0.0))

    def save_pin_state(self, door: str, failures: int, blocked_until: float) -> None:
        with self._lock:
            if failures or blocked_until > self._now():
                self._pins[door] = (int(failures), float(blocked_until))
            else:
                self._pins.pop(door, None)
            self._save()

    def _start_lockout(self, door: str, state: _DoorState, now: float) -> LockoutEvent:
        duration = min(self._settings.base_s * 2.0 ** min(state.level, _MAX_LEVEL), self._settings.max_s)
        state.level = min(state.level + 1, _MAX_LEVEL)
        event = LockoutEvent(LOCKOUT, door, now, now + duration, duration, len(state.failures), state.level)
        state.locked_until = state.last_lockout_end = now + duration
        state.failures = []
        log.warning("door %s locked out for %.0f s after %d failed attempts", door, duration, event.failures)
        return event

    def _door(self, door: str, now: float) -> _DoorState:
        state = self._doors.get(door)
        if state is None:
            state = self._doors[door] = _DoorState(locked_until=self._unknown_until)
        if state.locked_until - now > self._settings.max_s:  # the clock went backwards
            state.locked_until = state.last_lockout_end = now + self._settings.max_s
        return state

    def _recent(self, state: _DoorState, now: float) -> list[float]:
        return [t for t in state.failures if now - self._settings.window_s < t <= now]

    def _load(self) -> None:
        if not self._path.exists() and not self._path.is_symlink():
            return  # first start
        try:
            secure_file(self._path, create=False)
            raw = json.loads(self._path.read_text())
            if raw.get("version") != _VERSION:
                raise ValueError(f"unknown version {raw.get('version')!r}")
            self._doors = {str(d): _parse_door(s) for d, s in raw["doors"].items()}
            self._unknown_until = _finite(raw["all_locked_until"])
            self._pins = {str(d): (int(n), _finite(until)) for d, (n, until) in raw.get("pins", {}).items()}
        except (StorageError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._fail_secure(f"{type(exc).__name__}: {exc}")

    def _fail_secure(self, why: str) -> None:
        self._doors, self._pins = {}, {}
        self._unknown_until = self._now() + self._settings.max_s
        kept = self._path.with_name(self._path.name + ".corrupt")
        log.error(
            "lockout state %s is unreadable (%s); kept as %s. Every door is locked out for %.0f s until cleared",
            self._path, why, kept.name, self._settings.max_s,
        )
        try:
            self._path.replace(kept)
        except OSError as exc:
            log.error("could not move %s aside: %s", self._path, exc.strerror)
        self._save()

    def _save(self) -> None:
        doors = {d: asdict(s) for d, s in self._doors.items() if s != _DoorState()}
        try:
            state = {"version": _VERSION, "all_locked_until": self._unknown_until, "doors": doors, "pins": self._pins}
            write_private(self._path, json.dumps(state).encode())
        except StorageError as exc:
            # The in-memory state still holds (failures keep counting); only a restart would lose it.
            self.save_error = f"could not save the lockout state: {exc}"
            log.error("%s", self.save_error)
        else:
            self.save_error = None


def _finite(value: Any) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"time {value!r} is not finite")
    return number


def _parse_door(raw: dict[str, Any]) -> _DoorState:
    state = _DoorState(
        failures=[_finite(t) for t in raw["failures"]],
        level=int(raw["level"]),
        locked_until=_finite(raw["locked_until"]),
        last_lockout_end=_finite(raw["last_lockout_end"]),
    )
    if not 0 <= state.level <= _MAX_LEVEL:
        raise ValueError(f"lockout level {state.level} out of range")
    return state
