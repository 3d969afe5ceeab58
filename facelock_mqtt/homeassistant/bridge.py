"""Home Assistant over MQTT: discovery for every door's entities, and the bridge that publishes
decisions, motion, sensors and snapshots and routes commands to the doors' locks.

One config topic per entity, with conservative `device` and `origin` blocks (Home Assistant
rejects a whole entity over one unknown key there), so old (2024.3) and new HA both work.
Each door is one HA device: a lock (main entity, `"name": null`), a motion binary_sensor, an
event entity, an image entity, sensors, a diagnostic liveness sensor and a lockout-clear button.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import paho.mqtt.client as paho

from ..settings import LockSettings, MqttSettings
from .lock import REFUSALS, CommandRejected, DoorLock, LockState, PinStore, Relay, lock_discovery, parse_clear
from .mqtt import OFFLINE, ONLINE, MqttConnection
from .topics import Topics

log = logging.getLogger(__name__)

EVENT_TYPES = ("recognized", "denied", "spoof_suspected", "lockout", "remote_refused", "reported_not_me")
FACE_DECISIONS = ("recognized", "denied", "spoof_suspected")  # what the last person/score sensors show
EVENT_FIELDS = ("person", "candidate", "score", "threshold", "far_target", "frames_used", "latency_ms", "camera")
PRESS = "PRESS"
UNKNOWN = "None"  # the sensor payload Home Assistant shows as `unknown`
JPEG_MAGIC = b"\xff\xd8\xff"
DEVICE_KEYS = ("identifiers", "name", "manufacturer", "model", "sw_version")
ORIGIN_KEYS = ("name", "sw_version", "support_url")

try:
    SW_VERSION = version("facelock_mqtt")
except PackageNotFoundError:  # running from a source tree that was not installed
    SW_VERSION = "0+unknown"


ClearCallback = Callable[[str | None], None]


@dataclass(frozen=True)
class SensorSpec:
    name: str
    unit: str | None = None
    device_class: str | None = None
    numeric: bool = True
    diagnostic: bool = False
    icon: str | None = None


SENSORS: dict[str, SensorSpec] = {
    "last_person": SensorSpec("Last person", numeric=False, icon="mdi:account"),
    "last_score": SensorSpec("Last score", icon="mdi:face-recognition"),
    "fps": SensorSpec("Frames per second", unit="fps", icon="mdi:camera-timer"),
    "gate_pass_rate": SensorSpec("Gate pass rate", unit="%", icon="mdi:motion-sensor"),
    "decision_latency": SensorSpec("Decision latency", unit="ms", device_class="duration"),
    "cpu": SensorSpec("CPU", unit="%", icon="mdi:cpu-64-bit"),
    "liveness": SensorSpec("Liveness", numeric=False, diagnostic=True, icon="mdi:shield-account"),
    "rate_limited": SensorSpec("Snapshots rate-limited", diagnostic=True, icon="mdi:speedometer"),
    "drift": SensorSpec("Drift score", diagnostic=True, icon="mdi:chart-bell-curve"),  # guards/drift.py, PSI
}


def sensor_discovery(topics: Topics, door: str, key: str, unique_id: str) -> dict[str, Any]:
    spec = SENSORS[key]
    config: dict[str, Any] = {"name": spec.name, "unique_id": unique_id, "state_topic": topics.sensor(door, key)}
    optional = {"unit_of_measurement": spec.unit, "device_class": spec.device_class, "icon": spec.icon}
    config.update({k: v for k, v in optional.items() if v is not None})
    if spec.numeric:
        config["state_class"] = "measurement"
    if spec.diagnostic:
        config["entity_category"] = "diagnostic"
    return config


def door_entities(topics: Topics, door: str, node: str, pin_required: bool) -> dict[tuple[str, str], dict[str, Any]]:
    """Entity configs of one door keyed by (component, object id), without the shared blocks."""
    uid = partial("{}_{}_{}".format, node, door)
    entities: dict[tuple[str, str], dict[str, Any]] = {
        ("lock", "lock"): lock_discovery(topics, door, uid("lock"), pin_required),
        ("binary_sensor", "motion"): {
            "name": "Motion",
            "unique_id": uid("motion"),
            "state_topic": topics.motion(door),
            "device_class": "motion",
            "payload_on": "ON",
            "payload_off": "OFF",
        },
        ("event", "decision"): {
            "name": "Decision",
            "unique_id": uid("decision"),
            "state_topic": topics.event(door),
            "event_types": list(EVENT_TYPES),
        },
        ("binary_sensor", "problem"): {
            "name": "Problem",
            "unique_id": uid("problem"),
            "state_topic": topics.problem(door),
            "json_attributes_topic": topics.problem_attributes(door),
            "device_class": "problem",
            "payload_on": "ON",
            "payload_off": "OFF",
            "entity_category": "diagnostic",
        },
        ("image", "snapshot"): {
            "name": "Snapshot",
            "unique_id": uid("snapshot"),
            "image_topic": topics.image(door),
            "content_type": "image/jpeg",
        },
        ("button", "clear_lockout"): {
            "name": "Clear lockout",
            "unique_id": uid("clear_lockout"),
            "command_topic": topics.lockout_clear(door),
            "payload_press": PRESS,
            "retain": False,
            "qos": 1,
            "icon": "mdi:lock-reset",
        },
    }
    for key in SENSORS:
        entities[("sensor", key)] = sensor_discovery(topics, door, key, uid(key))
    return entities


def discovery_messages(topics: Topics, door: str, node: str, pin_required: bool) -> dict[str, dict[str, Any]]:
    """Every discovery topic of one door with its full JSON config."""
    shared = {
        "device": {
            "identifiers": [f"{node}_{door}"],
            "name": door.replace("_", " ").title(),
            "manufacturer": "FaceLock",
            "model": "Face recognition door lock",
            "sw_version": SW_VERSION,
        },
        "origin": {"name": "FaceLock", "sw_version": SW_VERSION},
        "availability_topic": topics.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
    }
    return {
        topics.discovery(component, f"{node}_{door}", obj): {**config, **shared}
        for (component, obj), config in door_entities(topics, door, node, pin_required).items()
    }


class HomeAssistantBridge:
    """Wires the doors' locks and the pipeline's results to Home Assistant over one MQTT connection."""

    def __init__(
        self,
        mqtt_settings: MqttSettings,
        doors: list[str],
        lock_settings: LockSettings,
        relay_factory: Callable[[str], Relay],
        pin_store: PinStore | None = None,
    ) -> None:
        self.topics = Topics(mqtt_settings.base_topic, mqtt_settings.discovery_prefix)
        self._lock_settings = lock_settings
        self.rejected: Counter[str] = Counter()
        self._node = mqtt_settings.client_id
        self._motion: dict[str, bool] = {door: False for door in doors}
        self._sensors: dict[str, dict[str, str]] = {door: {} for door in doors}
        self._snapshots: dict[str, bytes] = {}
        self._problems: dict[str, tuple[str, ...]] = {door: () for door in doors}
        self._clear_callbacks: dict[str, ClearCallback] = {}
        self._refusal_hooks: list[Callable[[str, str, str], None]] = []
        self.mqtt = MqttConnection(mqtt_settings, self.topics, announce=self.announce)
        self.locks = {
            door: DoorLock(
                door, lock_settings, relay_factory(door), on_state=self._publish_lock_state,
                pin_store=pin_store, on_refused=self._on_refused,
            )
            for door in doors
        }  # fmt: skip
        for door in doors:
            self.mqtt.subscribe(self.topics.lock_command(door), partial(self._on_lock_command, door))
            self.mqtt.subscribe(self.topics.lockout_clear(door), partial(self._on_lockout_clear, door))

    def start(self) -> None:
        self.mqtt.start()

    @property
    def connected(self) -> bool:
        """Whether the broker is reachable now; while it is not, nothing can drive the door."""
        return self.mqtt.connected.is_set()

    def stop(self) -> None:
        """Lock every door, publish `offline`, disconnect."""
        for lock in self.locks.values():
            lock.close()
        self.mqtt.stop()

    def announce(self) -> None:
        """(Re-)send every discovery config and every current state, retained."""
        for door, lock in self.locks.items():
            for topic, config in discovery_messages(self.topics, door, self._node, lock.pin_required).items():
                self.mqtt.publish(topic, json.dumps(config), qos=1, retain=True)
            for topic, payload in self._states(door).items():
                expiry = self._lock_expiry(lock.state) if topic == self.topics.lock_state(door) else None
                self.mqtt.publish(topic, payload, qos=1, retain=True, expiry_s=expiry)

    def publish_decision(
        self, door: str, event: Mapping[str, Any], snapshot_jpeg: bytes | None = None
    ) -> dict[str, Any]:
        """Publish one decision (QoS 1, not retained) and its snapshot; returns the event sent.

        `event` needs `event_type` (one of EVENT_TYPES) and should carry EVENT_FIELDS; an `id`,
        the door and a timestamp are added. `last_person`/`last_score` sensors follow the event.
        """
        self._check_door(door)
        if event.get("event_type") not in EVENT_TYPES:
            raise ValueError(f"event_type must be one of {EVENT_TYPES}, not {event.get('event_type')!r}")
        if snapshot_jpeg is not None and not snapshot_jpeg.startswith(JPEG_MAGIC):
            raise ValueError("snapshot_jpeg is not a JPEG")
        # Sent while the broker is away, it waits in the outbox: `late` tells Home Assistant that it
        # arrives after the reconnect, `timestamp` (the decision's) says when it happened.
        late = not self.connected
        payload = {"id": uuid.uuid4().hex, "door": door, "timestamp": round(time.time(), 3), "late": late, **event}
        self.mqtt.publish(self.topics.event(door), json.dumps(payload, allow_nan=False), qos=1, retain=False)
        if event["event_type"] in FACE_DECISIONS:  # a lockout or a remote refusal is no face decision
            # A denial names nobody: "" empties the text sensor and an unknown score stays unknown,
            # so no earlier person stands beside a stranger's score.
            score = event.get("score")
            self.publish_sensors(
                door, {"last_person": event.get("person") or "", "last_score": UNKNOWN if score is None else score}
            )
        if snapshot_jpeg is not None:
            self._snapshots[door] = snapshot_jpeg
            self._publish_state(self.topics.image(door), snapshot_jpeg)
        return payload

    def publish_motion(self, door: str, on: bool) -> None:
        self._check_door(door)
        self._motion[door] = on
        self._publish_state(self.topics.motion(door), "ON" if on else "OFF")

    def publish_sensors(self, door: str, values: Mapping[str, Any]) -> None:
        """Publish sensor values (keys of SENSORS; floats rounded to 4 decimals), retained."""
        self._check_door(door)
        for key, value in values.items():
            if key not in SENSORS:
                raise ValueError(f"unknown sensor {key!r}; known: {sorted(SENSORS)}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"sensor {key!r}: {value} is not a finite number")
            text = str(round(value, 4)) if isinstance(value, float) else str(value)
            self._sensors[door][key] = text
            self._publish_state(self.topics.sensor(door, key), text)

    def publish_problems(self, door: str, reasons: list[str]) -> None:
        """The door's `problem` binary sensor: ON with the reasons while anything stops the door
        from unlocking or recording as it should (no liveness, a full disk, ...), OFF when none."""
        self._check_door(door)
        self._problems[door] = tuple(reasons)
        for topic, payload in self._problem_states(door).items():
            self._publish_state(topic, payload)

    def _problem_states(self, door: str) -> dict[str, str]:
        reasons = list(self._problems[door])
        return {
            self.topics.problem(door): "ON" if reasons else "OFF",
            self.topics.problem_attributes(door): json.dumps({"reasons": reasons}),
        }

    def on_snapshot(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Hand each fresh payload on `topic` (e.g. a Frigate snapshot) to `callback`.
        Retained payloads are stale by definition and never reach the pipeline."""

        def handle(message: paho.MQTTMessage) -> None:
            if message.retain or not message.payload:
                self.rejected["stale_snapshot" if message.retain else "empty_snapshot"] += 1
                return
            callback(message.payload)

        self.mqtt.subscribe_frames(topic, handle)  # their own connection: a flood never delays a command

    def on_lockout_clear(self, door: str, callback: ClearCallback) -> None:
        """`callback(refusal)` for every well-formed clear request: `refusal` is None when the
        request had the authority of a remote unlock, else the reason key (see lock.REFUSALS)."""
        self._check_door(door)
        self._clear_callbacks[door] = callback

    def on_remote_refused(self, hook: Callable[[str, str, str], None]) -> None:
        """`hook(door, action, reason key)` after each refused remote action (the audit trail)."""
        self._refusal_hooks.append(hook)

    def _on_refused(self, door: str, action: str, reason: str) -> None:
        """Tell Home Assistant why a remote action did nothing (and how to enable it)."""
        event = {"event_type": "remote_refused", "action": action, "reason": REFUSALS[reason], "camera": door}
        self.publish_decision(door, event)
        for hook in self._refusal_hooks:
            hook(door, action, reason)

    def _on_lock_command(self, door: str, message: paho.MQTTMessage) -> None:
        self.locks[door].handle_command(message.payload, retained=message.retain)

    def _on_lockout_clear(self, door: str, message: paho.MQTTMessage) -> None:
        """Clearing a lockout lets faces be tried again: it needs a remote unlock's authority."""
        try:
            if message.retain:
                raise CommandRejected("retained")
            code = parse_clear(message.payload)
        except CommandRejected as exc:
            self.rejected["lockout_clear"] += 1
            log.warning("door %s: ignored a lockout-clear message (%s, %d bytes)", door, exc.reason, len(message.payload))
            return
        callback = self._clear_callbacks.get(door)
        if callback is None:
            log.warning("door %s: lockout clear pressed but nothing handles it", door)
            return
        try:
            self.locks[door].authorize(code, "CLEAR_LOCKOUT")
        except CommandRejected as exc:
            log.warning("door %s: lockout clear refused (%s)", door, exc.reason)
            callback(exc.reason)
            return
        callback(None)

    def _publish_lock_state(self, door: str, state: LockState) -> None:
        self._publish_state(self.topics.lock_state(door), state.value, self._lock_expiry(state))

    def _lock_expiry(self, state: LockState) -> float | None:
        """UNLOCKING, UNLOCKED and OPEN end with the relock: a copy the broker still holds after
        that (queued for a slow client, or retained) is stale and expires (MQTT 5 brokers).
        LOCKED and JAMMED last until something changes them."""
        if state in (LockState.LOCKED, LockState.JAMMED):
            return None
        return self._lock_settings.unlocking_s + self._lock_settings.relock_s + 1.0

    def _states(self, door: str) -> dict[str, str | bytes]:
        states: dict[str, str | bytes] = {
            self.topics.lock_state(door): self.locks[door].state.value,
            self.topics.motion(door): "ON" if self._motion[door] else "OFF",
        }
        states.update({self.topics.sensor(door, key): value for key, value in self._sensors[door].items()})
        states.update(self._problem_states(door))
        if door in self._snapshots:
            states[self.topics.image(door)] = self._snapshots[door]
        return states

    def _publish_state(self, topic: str, payload: str | bytes, expiry_s: float | None = None) -> None:
        """Retained states are skipped while the broker is away: announce() sends the latest on
        reconnect, and a long outage must not fill the outbox that decision events need."""
        if self.mqtt.connected.is_set():
            self.mqtt.publish(topic, payload, qos=1, retain=True, expiry_s=expiry_s)

    def _check_door(self, door: str) -> None:
        if door not in self.locks:
            raise ValueError(f"unknown door {door!r}; configured: {sorted(self.locks)}")
