"""FaceLock's MQTT topic grammar, in one place.

FaceLock's own topics hang off one base (default `facelock`):

    <base>/availability                   online / offline (retained; offline is the Last Will)
    <base>/<door>/lock/state              LOCKED, UNLOCKING, UNLOCKED, OPEN, JAMMED (retained)
    <base>/<door>/lock/set                LOCK / UNLOCK / OPEN commands (never retained)
    <base>/<door>/event                   one JSON object per decision (QoS 1, not retained)
    <base>/<door>/motion                  ON / OFF (retained)
    <base>/<door>/image                   JPEG of the last decision (retained)
    <base>/<door>/sensor/<name>           one sensor value (retained)
    <base>/<door>/problem                 ON / OFF: something stops this door from working (retained)
    <base>/<door>/problem/attributes      {"reasons": [...]}: what, in words (retained)
    <base>/<door>/lockout/clear           PRESS clears a lockout (never retained)

Home Assistant's side: discovery configs on `<prefix>/<component>/<node>/<object>/config`
(one per entity) and its birth/last-will messages on `<prefix>/status`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Home Assistant's rule for discovery node and object ids.
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_DOOR = re.compile(r"^[a-z0-9_]+$")


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise ValueError(f"{what} {value!r} must match {pattern.pattern}")
    return value


@dataclass(frozen=True)
class Topics:
    """Builds every topic FaceLock publishes or subscribes to."""

    base: str = "facelock"
    discovery_prefix: str = "homeassistant"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth (`online`) and last-will (`offline`) topic."""
        return f"{self.discovery_prefix}/status"

    def door(self, door: str) -> str:
        return f"{self.base}/{_check(_DOOR, door, 'door name')}"

    def lock_state(self, door: str) -> str:
        return f"{self.door(door)}/lock/state"

    def lock_command(self, door: str) -> str:
        return f"{self.door(door)}/lock/set"

    def event(self, door: str) -> str:
        return f"{self.door(door)}/event"

    def motion(self, door: str) -> str:
        return f"{self.door(door)}/motion"

    def image(self, door: str) -> str:
        return f"{self.door(door)}/image"

    def sensor(self, door: str, name: str) -> str:
        return f"{self.door(door)}/sensor/{_check(_ID, name, 'sensor name')}"

    def problem(self, door: str) -> str:
        return f"{self.door(door)}/problem"

    def problem_attributes(self, door: str) -> str:
        return f"{self.problem(door)}/attributes"

    def lockout_clear(self, door: str) -> str:
        return f"{self.door(door)}/lockout/clear"

    def discovery(self, component: str, node: str, obj: str) -> str:
        """`<prefix>/<component>/<node>/<object>/config`, one per entity."""
        parts = (_check(_ID, component, "component"), _check(_ID, node, "node id"), _check(_ID, obj, "object id"))
        return f"{self.discovery_prefix}/{'/'.join(parts)}/config"

    def discovery_filter(self) -> str:
        """A subscription that sees every discovery config (tests, clean-up tools)."""
        return f"{self.discovery_prefix}/+/+/+/config"
