"""The door lock's state machine and command whitelist, with a fake relay (no broker needed)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_client import FakeRelay, render, wait_until
from pydantic import SecretStr

from facelock_mqtt.homeassistant.lock import (
    COMMAND_TEMPLATE,
    PIN_TRIES,
    Command,
    CommandRejected,
    DoorLock,
    LockState,
    check_authority,
    parse_command,
)
from facelock_mqtt.guards.lockout import Lockout
from facelock_mqtt.settings import LockoutSettings, LockSettings

PIN = "4321"
FAST = LockSettings(relock_s=1.0, unlocking_s=0.1, allow_remote_without_pin=True)  # PIN-less remote commands on


def test_pin_guessing_blocks_remote_unlock_but_not_lock() -> None:
    relay = FakeRelay()
    lock = DoorLock("front_door", LockSettings(pin=SecretStr(PIN)), relay)
    for guess in range(PIN_TRIES):
        assert lock.handle_command(render(COMMAND_TEMPLATE, "UNLOCK", f"{guess:04d}")) is None
    assert lock.handle_command(render(COMMAND_TEMPLATE, "UNLOCK", PIN)) is None  # right PIN, too late
    assert lock.rejected["pin_blocked"] == 1 and lock.rejected["wrong_code"] == PIN_TRIES
    assert lock.handle_command(b"LOCK") is Command.LOCK  # locking is never blocked
    assert lock.unlock_for("alice")  # nor is the face path
    assert relay.calls.count("unlock") == 1
    lock.close()


def recorder() -> tuple[list[LockState], Callable[[str, LockState], None]]:
    states: list[LockState] = []
    return states, lambda door, state: states.append(state)


def test_relay_failure_on_unlock_keeps_the_door_locked() -> None:
    states, on_state = recorder()
    relay = FakeRelay(fail_unlock=True)
    lock = DoorLock("front_door", FAST, relay, on_state)
    assert lock.unlock_for("alice") is False
    assert lock.state is LockState.LOCKED and relay.calls == ["lock", "unlock", "lock"]
    assert LockState.UNLOCKING not in states
    lock.close()


def test_relay_failure_on_lock_reports_jammed_and_retries() -> None:
    states, on_state = recorder()
    relay = FakeRelay(fail_lock=True)
    lock = DoorLock("front_door", FAST, relay, on_state)
    assert lock.state is LockState.JAMMED
    relay.fail_lock = False  # the relay recovers; the retry timer locks the door
    wait_until(lambda: lock.state is LockState.LOCKED, what="retry")
    assert states == [LockState.JAMMED, LockState.LOCKED]
    lock.close()


def test_state_callback_errors_do_not_stop_the_lock() -> None:
    def broken(door: str, state: LockState) -> None:
        raise ConnectionError("publish failed")

    lock = DoorLock("front_door", LockSettings(relock_s=1, unlocking_s=0), FakeRelay(), broken)
    assert lock.unlock_for("alice") and lock.state is LockState.UNLOCKED  # no actuation time: at once
    lock.close()
    assert lock.state is LockState.LOCKED


def test_concurrent_unlocks_energise_the_relay_once_and_close_cancels_relock() -> None:
    relay = FakeRelay()
    lock = DoorLock("front_door", LockSettings(relock_s=60, unlocking_s=0), relay)
    threads = [threading.Thread(target=lock.unlock_for, args=(f"p{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert relay.calls.count("unlock") == 1
    lock.handle_command(b"LOCK")
    assert lock.state is LockState.LOCKED
    lock.close()
    assert lock.unlock_for("late") is False and relay.calls.count("unlock") == 1


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=80).map(str.encode),
        st.fixed_dictionaries(
            {
                "action": st.sampled_from(["LOCK", "UNLOCK", "OPEN", "unlock"]),
                "code": st.one_of(st.none(), st.text(max_size=6), st.integers()),
            }
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_no_payload_opens_a_pin_protected_lock_without_the_pin(payload: bytes) -> None:
    for settings in (LockSettings(pin=SecretStr(PIN)), LockSettings()):  # with a PIN, and the default
        try:
            command, code = parse_command(payload)
            if command is not Command.LOCK:
                check_authority(code, settings)
        except CommandRejected as exc:
            assert exc.reason
            continue
        assert command is Command.LOCK or (settings.pin is not None and json.loads(payload)["code"] == PIN)


def test_reconfigure_applies_a_new_pin() -> None:
    relay = FakeRelay()
    lock = DoorLock("front_door", FAST, relay)
    lock.reconfigure(LockSettings(relock_s=1.0, unlocking_s=0.1, pin=SecretStr(PIN)))
    assert lock.pin_required and lock.handle_command(b"UNLOCK") is None
    assert lock.rejected["code_missing"] == 1 and "unlock" not in relay.calls
    assert lock.handle_command(render(COMMAND_TEMPLATE, "UNLOCK", PIN)) is Command.UNLOCK
    lock.close()


def test_pin_guessing_block_survives_a_restart(tmp_path) -> None:
    """The block is kept by the lockout guard's state file: restarting FaceLock does not reset it."""
    settings = LockSettings(pin=SecretStr(PIN))
    store = Lockout(LockoutSettings(), tmp_path / "lockout.json")
    lock = DoorLock("front_door", settings, FakeRelay(), pin_store=store)
    for guess in range(PIN_TRIES):
        lock.handle_command(render(COMMAND_TEMPLATE, "UNLOCK", f"{guess:04d}"))
    lock.close()
    relay = FakeRelay()
    again = DoorLock("front_door", settings, relay, pin_store=Lockout(LockoutSettings(), tmp_path / "lockout.json"))
    assert again.handle_command(render(COMMAND_TEMPLATE, "UNLOCK", PIN)) is None
    assert again.rejected["pin_blocked"] == 1 and "unlock" not in relay.calls
    other = DoorLock("back_door", settings, FakeRelay(), pin_store=Lockout(LockoutSettings(), tmp_path / "lockout.json"))
    assert other.handle_command(render(COMMAND_TEMPLATE, "UNLOCK", PIN)) is Command.UNLOCK  # per door
    again.close()
    other.close()


def test_a_refused_remote_action_is_reported_with_its_reason() -> None:
    refused: list[tuple[str, str, str]] = []
    lock = DoorLock("front_door", LockSettings(), FakeRelay(), on_refused=lambda *why: refused.append(why))
    assert lock.handle_command(b"OPEN") is None and lock.handle_command(b"LOCK") is Command.LOCK
    assert refused == [("front_door", "OPEN", "no_pin_set")]
    lock.close()
