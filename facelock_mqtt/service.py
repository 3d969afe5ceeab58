"""The service: wires sources, doors, Home Assistant and the guards, one thread per camera."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from .door import Door, Guards
from .errors import ConfigError
from .guards.audit import AUDIT_FILE, AuditLog
from .guards.liveness import liveness_status, load_liveness
from .guards.lockout import Lockout
from .homeassistant.bridge import HomeAssistantBridge
from .homeassistant.broker import embedded_broker_for
from .pipeline.source import FrameSource, open_source
from .recognizer import Recognizer
from .settings import CameraSettings, MqttSettings, Settings
from .storage.files import secure_dir
from .storage.snapshots import SNAPSHOT_DIR, SnapshotStore
from .web import MetricsHistory, PanelServer

log = logging.getLogger(__name__)

SENSOR_PERIOD_S = 10.0
SUPERVISOR_URL = "http://supervisor"


class LoggingRelay:
    """No door hardware is wired by default: the lock entity is the integration point (an HA
    automation drives the real lock from it). This relay only logs what it was told."""

    def __init__(self, door: str) -> None:
        self.door = door

    def unlock(self) -> None:
        log.info("door %s: relay released", self.door)

    def lock(self) -> None:
        log.info("door %s: relay locked", self.door)


def supervisor_mqtt(settings: MqttSettings) -> MqttSettings:
    """Inside Home Assistant, the Supervisor hands out the MQTT broker's address and credentials.

    Its answer goes through `MqttSettings` validation like any other setting (a `model_copy`
    would skip it and leave, e.g., the password a plain string); a malformed or partial answer is
    a one-line ConfigError naming what is wrong.
    """
    token = os.environ.get("SUPERVISOR_TOKEN")
    if settings.host is not None or not token:
        return settings
    url = os.environ.get("FACELOCK_SUPERVISOR_URL", SUPERVISOR_URL).rstrip("/") + "/services/mqtt"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        raise ConfigError(
            f"mqtt: the Supervisor refused the MQTT service request ({exc.code} {exc.reason}); "
            "install the Mosquitto add-on and restart FaceLock"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"mqtt: cannot ask the Supervisor for the MQTT service at {url} ({exc})") from exc
    return _mqtt_from_supervisor(settings, answer)


def _mqtt_from_supervisor(settings: MqttSettings, answer: object) -> MqttSettings:
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict):
        raise ConfigError("mqtt: the Supervisor's MQTT service answer has no 'data' object")
    missing = [key for key in ("host", "port") if data.get(key) in (None, "")]
    if missing:
        raise ConfigError(f"mqtt: the Supervisor's MQTT service answer lacks {', '.join(missing)}")
    fields = settings.model_dump()
    fields.update(
        host=data["host"],
        port=data["port"],
        username=data.get("username") or None,
        password=data.get("password") or None,
        tls=data.get("ssl", False),
    )
    try:
        return MqttSettings.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"mqtt: the Supervisor's MQTT service answer is invalid: {problems}") from exc


class Service:
    def __init__(
        self,
        settings: Settings,
        cameras: list[CameraSettings] | None = None,
        realtime: bool = True,
        on_event: Callable[[dict], None] | None = None,
        relay_factory: Callable[[str], object] = LoggingRelay,
        panel: bool = False,
    ) -> None:
        """`panel`: also serve the owner's panel (web) when `web.enabled`; `facelock run` does, replay does not."""
        self.settings = settings
        self.cameras = cameras if cameras is not None else list(settings.cameras)
        if not self.cameras:
            log.warning("no cameras configured: the service only serves Home Assistant and MQTT snapshots")
        data_dir = secure_dir(settings.data_dir)
        audit = AuditLog(data_dir / AUDIT_FILE, settings.audit)
        report = audit.verify()
        if not report.ok:
            log.error("AUDIT TRAIL DAMAGED OR TAMPERED WITH: %s", report.summary())
        self.recognizer = Recognizer(data_dir, settings.model, settings.quality, settings.match, audit=audit)
        self.recognizer.matcher  # fail at start, not at the door, if the bundle cannot serve the target FAR
        liveness_dir = settings.liveness.models or data_dir / "liveness"
        self.guards = Guards(
            lockout=Lockout(settings.lockout, data_dir / "lockout.json"),
            audit=audit,
            liveness=load_liveness(liveness_dir, settings.model.threads),
        )
        mqtt_settings, self.broker = embedded_broker_for(supervisor_mqtt(settings.mqtt))
        doors = [c.name for c in self.cameras]
        self.bridge = HomeAssistantBridge(mqtt_settings, doors, settings.lock, relay_factory)
        self.sources: dict[str, FrameSource] = {c.name: open_source(c, realtime=realtime) for c in self.cameras}
        self.doors = {
            c.name: Door(
                c, settings.gate, settings.decision, self.recognizer, self.bridge.locks[c.name],
                self.guards, self.bridge, on_event,
            )
            for c in self.cameras
        }  # fmt: skip
        for camera in self.cameras:
            self.bridge.on_lockout_clear(camera.name, self._clear_lockout(camera.name))
            if camera.mqtt_topic is not None:
                self.bridge.on_snapshot(camera.mqtt_topic, self.sources[camera.name].push)
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.metrics = MetricsHistory()  # the panel's 24 h charts
        self.panel: PanelServer | None = None
        self._panel_wanted = panel and settings.web.enabled
        self.snapshots = SnapshotStore(data_dir / SNAPSHOT_DIR, settings.audit.retention_days) if self._panel_wanted else None
        for door in self.doors.values():
            door.snapshots = self.snapshots

    def _clear_lockout(self, door: str) -> Callable[[], None]:
        def clear() -> None:
            for event in self.guards.lockout.clear(door):
                self.guards.audit.append(event.event_type, camera=door, details=event.payload())
            log.info("door %s: lockout cleared from Home Assistant", door)

        return clear

    def start(self) -> None:
        if self._panel_wanted:  # first: a panel that cannot listen stops the start before a door runs
            self.panel = PanelServer.for_service(self)
            self.panel.start()
        self.bridge.start()
        self.start_cameras()

    def start_cameras(self) -> None:
        for door in self.doors.values():
            self.bridge.publish_sensors(door.name, {"liveness": liveness_status(self.guards.liveness)})
        for name, source in self.sources.items():
            source.start()
            thread = threading.Thread(target=self._run_door, args=(name,), name=f"facelock-door-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run_door(self, name: str) -> None:
        source, door = self.sources[name], self.doors[name]
        last_sensors, cpu_start, frames_start = time.monotonic(), time.process_time(), 0
        while not self.stopping.is_set():
            frame = source.latest(timeout=0.5)
            if frame is None:
                if source.finished:
                    break
                continue
            door.process(frame)
            now = time.monotonic()
            if now - last_sensors >= SENSOR_PERIOD_S:
                self._publish_sensors(door, now - last_sensors, time.process_time() - cpu_start, frames_start)
                last_sensors, cpu_start, frames_start = now, time.process_time(), door.stats.frames
        door.finish(door.clock(frame) if frame is not None else time.monotonic())

    def _publish_sensors(self, door: Door, elapsed: float, cpu: float, frames_start: int) -> None:
        stats = door.stats
        values = {
            "fps": (stats.frames - frames_start) / elapsed,
            "gate_pass_rate": 100.0 * stats.gated / max(stats.frames, 1),
            "cpu": 100.0 * cpu / elapsed,  # process-wide, in % of one core
        }
        if stats.last_latency_ms is not None:
            values["decision_latency"] = stats.last_latency_ms
        self.metrics.add(door.name, values)
        try:
            self.bridge.publish_sensors(door.name, values)
        except ValueError as exc:
            log.warning("sensors not published: %s", exc)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every camera thread to end (files end; live streams run until stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        self.stopping.set()
        for source in self.sources.values():
            source.stop()
        self.wait(timeout=10)
        self.bridge.stop()
        if self.panel is not None:
            self.panel.stop()
        if self.snapshots is not None:
            self.snapshots.close()
        self.recognizer.close()  # closes the audit trail too
        if self.broker is not None:
            self.broker.stop()


def replay_camera(video: str, door: str, fps: float) -> CameraSettings:
    if not Path(video).exists() and "%" not in video:
        raise ConfigError(f"replay: {video} does not exist")
    return CameraSettings(name=door, url=video, fps=fps)
