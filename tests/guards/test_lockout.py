"""Lockout timing with a fake clock: counting, doubling, reset, clear, per door, across restarts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import fill

from facelock_mqtt.guards.lockout import LOCKOUT, LOCKOUT_CLEARED, STATE_FILE, Lockout
from facelock_mqtt.settings import LockoutSettings

SETTINGS = LockoutSettings(max_failures=5, window_s=600, base_s=30, max_s=300, reset_s=3600)


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / STATE_FILE


def fail(lockout: Lockout, clock: Clock, times: int, door: str = "front", gap_s: float = 10.0):
    events = []
    for _ in range(times):
        events.append(lockout.record_failure(door))
        clock.advance(gap_s)
    return events


def test_n_failures_lock_for_base_period(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    assert fail(lockout, clock, 4) == [None] * 4
    assert not lockout.status("front").locked and lockout.status("front").failures == 4
    event = lockout.record_failure("front")
    assert event is not None and event.event_type == LOCKOUT
    assert (event.door, event.duration_s, event.failures, event.level) == ("front", 30, 5, 1)
    assert event.until == clock.t + 30
    json.dumps(event.payload())  # publishable as is
    clock.advance(29.9)
    status = lockout.status("front")
    assert status.locked and status.remaining_s == pytest.approx(0.1)
    clock.advance(0.1)
    assert not lockout.status("front").locked


def test_failures_during_a_lockout_are_ignored(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, gap_s=0)
    assert fail(lockout, clock, 10, gap_s=1) == [None] * 10
    clock.advance(30)
    assert lockout.status("front").failures == 0 and not lockout.status("front").locked


def test_each_further_lockout_doubles_up_to_the_cap(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    durations = []
    for _ in range(6):
        event = fail(lockout, clock, 5, gap_s=0)[-1]
        assert event is not None
        durations.append(event.duration_s)
        assert lockout.status("front").locked
        clock.advance(event.duration_s)
    assert durations == [30, 60, 120, 240, 300, 300]


def test_failures_outside_the_window_do_not_count(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 4, gap_s=100)  # at 0, 100, 200, 300
    clock.advance(250)  # now 650: the failure at 0 has left the 600 s window
    assert lockout.record_failure("front") is None
    assert lockout.status("front").failures == 4
    assert lockout.record_failure("front") is not None


def test_success_resets_failures_and_doubling(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, gap_s=0)
    clock.advance(30)
    fail(lockout, clock, 4)
    lockout.record_success("front")
    assert lockout.status("front").failures == 0 and lockout.status("front").level == 0
    assert fail(lockout, clock, 4) == [None] * 4
    event = lockout.record_failure("front")
    assert event is not None and event.duration_s == 30  # back to base, not 60


def test_success_during_a_lockout_does_not_end_it(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, gap_s=0)
    lockout.record_success("front")
    assert lockout.status("front").locked


def test_doubling_resets_after_a_quiet_period(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, gap_s=0)
    clock.advance(30)
    assert fail(lockout, clock, 5, gap_s=0)[-1].duration_s == 60
    clock.advance(60 + SETTINGS.reset_s)
    assert fail(lockout, clock, 5, gap_s=0)[-1].duration_s == 30


def test_clear_ends_a_lockout(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, gap_s=0)
    events = lockout.clear("front")
    assert [(e.event_type, e.door) for e in events] == [(LOCKOUT_CLEARED, "front")]
    status = lockout.status("front")
    assert not status.locked and status.failures == 0 and status.level == 0
    assert lockout.clear("front") == []  # nothing to clear any more
    assert fail(lockout, clock, 5, gap_s=0)[-1].duration_s == 30


def test_doors_are_independent_and_clear_all(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, door="front", gap_s=0)
    fail(lockout, clock, 4, door="back", gap_s=0)
    assert lockout.status("front").locked and not lockout.status("back").locked
    assert lockout.status("garage").failures == 0
    fail(lockout, clock, 1, door="back", gap_s=0)
    assert sorted(e.door for e in lockout.clear()) == ["back", "front"]
    assert not lockout.status("front").locked and not lockout.status("back").locked


def test_a_restart_keeps_an_active_lockout_and_the_count(path: Path, clock: Clock) -> None:
    first = Lockout(SETTINGS, path, clock)
    fail(first, clock, 5, gap_s=0)
    fail(first, clock, 4, door="back", gap_s=0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    clock.advance(10)
    second = Lockout(SETTINGS, path, clock)  # a reboot
    status = second.status("front")
    assert status.locked and status.remaining_s == pytest.approx(20) and status.level == 1
    assert second.record_failure("back") is not None  # the 5th failure, counted across the restart
    clock.advance(20)
    assert fail(second, clock, 5, gap_s=0)[-1].duration_s == 60  # doubling survives too


def test_an_unreadable_state_file_locks_every_door(path: Path, clock: Clock, caplog) -> None:
    path.write_text("{not json")
    lockout = Lockout(SETTINGS, path, clock)
    assert "unreadable" in caplog.text
    assert path.with_name(STATE_FILE + ".corrupt").read_text() == "{not json"
    for door in ("front", "back"):
        status = lockout.status(door)
        assert status.locked and status.remaining_s == SETTINGS.max_s
    again = Lockout(SETTINGS, path, clock)  # the fail-secure state itself survives a restart
    assert again.status("front").locked
    again.clear()
    assert not again.status("front").locked and not Lockout(SETTINGS, path, clock).status("back").locked


@pytest.mark.parametrize(
    "content",
    [
        (
            '{"version": 1, "all_locked_until": 0, "doors": {"front": {"failures": [], "level": 1, '
            '"locked_until": NaN, "last_lockout_end": 0}}}'
        ),
        '{"version": 1, "all_locked_until": 0, "doors": {"front": {"level": 1}}}',
        '{"version": 2, "all_locked_until": 0, "doors": {}}',
        '[]',
    ],
)
def test_a_malformed_state_fails_secure(path: Path, clock: Clock, content: str) -> None:
    path.write_text(content)
    assert Lockout(SETTINGS, path, clock).status("front").locked


def test_a_clock_set_back_never_locks_longer_than_the_cap(path: Path, clock: Clock) -> None:
    lockout = Lockout(SETTINGS, path, clock)
    fail(lockout, clock, 5, gap_s=0)
    clock.advance(-86400)  # the wall clock jumped a day back
    status = lockout.status("front")
    assert status.locked and status.remaining_s == SETTINGS.max_s
    clock.advance(SETTINGS.max_s)
    assert not lockout.status("front").locked


def test_on_a_full_disk_failures_keep_counting_in_memory(small_disk, clock: Clock) -> None:
    folder = small_disk("64k")
    lockout = Lockout(LockoutSettings(max_failures=3), folder / STATE_FILE, clock)
    fail(lockout, clock, 1)
    fill(folder)
    events = fail(lockout, clock, 2)  # the state file cannot be rewritten any more
    assert lockout.save_error is not None and "No space left on device" in lockout.save_error
    assert events[-1] is not None and events[-1].event_type == LOCKOUT  # counted: the third failure locks
    assert lockout.status("front").locked
    (folder / "filler").unlink()
    lockout.clear("front")  # the next write succeeds again
    assert lockout.save_error is None and json.loads((folder / STATE_FILE).read_text())["doors"] == {}
