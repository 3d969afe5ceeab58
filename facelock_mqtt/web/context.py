"""What the panel is handed by the service: the running objects it reads and changes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..guards.audit import AuditLog
from ..guards.liveness import LivenessModel
from ..guards.lockout import Lockout
from ..homeassistant.lock import DoorLock
from ..recognizer import Recognizer
from ..settings import Settings
from ..storage.snapshots import SnapshotStore
from .metrics import MetricsHistory

log = logging.getLogger(__name__)


class DoorView(Protocol):
    """What the panel reads from a running door (facelock_mqtt.door.Door)."""

    name: str
    viewers: int
    live: tuple | None
    stats: Any


@dataclass
class PanelContext:
    settings: Settings
    recognizer: Recognizer
    audit: AuditLog
    locks: Mapping[str, DoorLock]
    doors: Mapping[str, DoorView]
    lockout: Lockout
    liveness: LivenessModel | None
    snapshots: SnapshotStore | None
    metrics: MetricsHistory
    # Publishes an event on a door's Home Assistant event entity (the bridge's publish_decision).
    notify: Callable[[str, dict], object] | None = None
    # Frames of "look at the camera" awaiting the owner's confirmation: key -> (time, person, images).
    captures: dict[str, tuple[float, str, list[tuple[str, np.ndarray]]]] = field(default_factory=dict)
    # One thread for gallery work: changes are serialised and the event loop never blocks on a model.
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="facelock-panel")
    )

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    def close(self) -> None:
        self.worker.shutdown(wait=True)
