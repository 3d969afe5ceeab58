"""The service: wires sources, doors, Home Assistant and the guards, one thread per camera."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import cv2
from pydantic import ValidationError

from .door import LIVENESS_UNAVAILABLE, UNTRUSTED_SOURCE, Door, DoorStats, Guards
from .errors import ConfigError
from .guards.audit import AUDIT_FILE, AuditLog
from .guards.drift import DriftMonitor
from .guards.liveness import LivenessModel, liveness_status, load_liveness, load_operating_point
from .guards.lockout import Lockout
from .homeassistant.bridge import UNKNOWN, HomeAssistantBridge
from .homeassistant.broker import embedded_broker_for
from .pipeline.source import FrameSource, open_source
from .recognizer import Recognizer
from .remote import EdgeVerifier, RemoteLiveness, RemoteVerifier
from .settings import CameraSettings, MqttSettings, Settings
from .storage.files import secure_dir
from .storage.snapshots import SNAPSHOT_DIR, SnapshotStore
from .web import MetricsHistory, PanelServer

log = logging.getLogger(__name__)

SENSOR_PERIOD_S = 10.0
LOW_DISK_BYTES = 20_000_000  # below this the audit trail and lockout state may fail to write
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
        # OpenCV's own worker pool, off: every door already runs in a thread of its own, and on the
        # gate's small frames the pool's wake-ups cost more than they save (measured: 0.30 % of a
        # core per idle camera, 1.03 -> 0.76 % with a gate_url; a 1080p resize 0.39 -> 0.51 ms).
        cv2.setNumThreads(1)
        self.cameras = cameras if cameras is not None else list(settings.cameras)
        if not self.cameras:
            log.warning("no cameras configured: the service only serves Home Assistant and MQTT snapshots")
        supervised = supervisor_mqtt(settings.mqtt)  # first: a refused or absent Supervisor fails at once
        data_dir = secure_dir(settings.data_dir)
        audit = AuditLog(data_dir / AUDIT_FILE, settings.audit)
        self.audit_report = audit.verify()
        if not self.audit_report.ok:
            log.error("AUDIT TRAIL DAMAGED OR TAMPERED WITH: %s", self.audit_report.summary())
        self.recognizer = Recognizer(data_dir, settings.model, settings.quality, settings.match, audit=audit)
        self.recognizer.matcher  # fail at start, not at the door, if the bundle cannot serve the target FAR
        liveness_dir = settings.liveness.models or data_dir / "liveness"
        self.guards = Guards(
            lockout=Lockout(settings.lockout, data_dir / "lockout.json"),
            audit=audit,
            # Half the threads: its models run beside the embedder (Door._identify); measured on 2
            # cores, 1 thread each beside a 2-thread embedding took 19.2 ms against 21.0 ms with 2.
            liveness=load_liveness(liveness_dir, max(1, settings.model.threads // 2)),
            liveness_required=settings.liveness.required,
        )
        if settings.verify.mode != "local":  # the CNN runs on the workers; the fusion stays here
            self.guards.liveness = remote_liveness(settings, self.guards.liveness)
        self.problems = startup_problems(self.guards, self.cameras)
        if not self.audit_report.ok:
            for reasons in self.problems.values():
                reasons.append("the audit trail is damaged or was tampered with (`facelock audit verify`)")
        mqtt_settings, self.broker = embedded_broker_for(supervised)
        doors = [c.name for c in self.cameras]
        self.bridge = HomeAssistantBridge(
            mqtt_settings, doors, settings.lock, relay_factory, pin_store=self.guards.lockout
        )
        self.bridge.on_remote_refused(self._audit_refusal)
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
            door.drift = DriftMonitor.for_door(door.name, settings.drift, data_dir)
        self.remote = self._remote_verifier(mqtt_settings)

    def _remote_verifier(self, mqtt_settings: MqttSettings) -> EdgeVerifier | None:
        """verify.mode remote/auto: every door verifies through the workers (remote/)."""
        verify = self.settings.verify
        if verify.mode == "local":
            return None
        client = RemoteVerifier(mqtt_settings, verify, mqtt_settings.client_id + "-verify")
        edge = EdgeVerifier(client, self.recognizer.engine, self.recognizer.fingerprint, auto=verify.mode == "auto")
        for door in self.doors.values():
            door.remote = edge
        return edge

    def _clear_lockout(self, door: str) -> Callable[[str | None], None]:
        """Every clear request is audited: refused, cleared, or with nothing to clear."""

        def clear(refusal: str | None) -> None:
            if refusal is not None:
                self.guards.audit.append("lockout_clear_refused", camera=door, details={"reason": refusal})
                return
            events = self.guards.lockout.clear(door)
            for event in events:
                self.guards.audit.append(event.event_type, camera=door, details=event.payload())
            if not events:
                self.guards.audit.append("lockout_clear_noop", camera=door, details={"reason": "no lockout to clear"})
            log.info("door %s: lockout clear from Home Assistant (%d cleared)", door, len(events))

        return clear

    def _audit_refusal(self, door: str, action: str, reason: str) -> None:
        self.guards.audit.append("remote_refused", camera=door, details={"action": action, "reason": reason})

    def start(self) -> None:
        if self._panel_wanted:  # first: a panel that cannot listen stops the start before a door runs
            self.panel = PanelServer.for_service(self)
            self.panel.start()
        self.bridge.start()
        self.start_cameras()

    def start_cameras(self) -> None:
        if self.remote is not None and not self.remote.client.link.connected.is_set():
            self.remote.client.start(required=False)  # while the broker is away the doors deny
            if self.remote.client.link.connected.is_set():
                self.remote.publish_gallery(self.recognizer.matcher)  # the workers have it before a door asks
        for door in self.doors.values():
            # Fresh values at every start: the broker still holds the previous process's (retained).
            idle = {"fps": 0.0, "gate_pass_rate": UNKNOWN, "cpu": UNKNOWN, "decision_latency": UNKNOWN}
            self.bridge.publish_sensors(door.name, {"liveness": self._liveness_status(), **idle})
            self.bridge.publish_problems(door.name, self._runtime_problems(door.name))
        for name, source in self.sources.items():
            source.start()
            thread = threading.Thread(target=self._run_door, args=(name,), name=f"facelock-door-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _liveness_status(self) -> str:
        if self.guards.liveness is None and self.guards.liveness_required:
            return "off: no liveness models installed; recognised faces are denied"
        return liveness_status(self.guards.liveness)

    def _run_door(self, name: str) -> None:
        source, door = self.sources[name], self.doors[name]
        period = SensorPeriod(door.stats)
        while not self.stopping.is_set():
            frame = source.latest(timeout=0.5)
            if frame is None and source.finished:
                break
            if frame is not None:
                door.process(frame)
                if hasattr(source, "set_idle"):  # keyframes only while the door is idle (av_source)
                    source.set_idle(door.idle)
            if period.due():  # with or without frames: a dead camera shows 0 fps, not its last rate
                self.bridge.publish_problems(door.name, self._runtime_problems(door.name))
                drift = door.drift.score()
                self._publish_sensors(door, {**period.values(door.stats), "rate_limited": source.stats.rate_limited,
                                             "drift": UNKNOWN if drift is None else drift})  # fmt: skip
                door.drift.maybe_save()
                period = SensorPeriod(door.stats)
        door.finish(door.clock(frame) if frame is not None else time.monotonic())
        door.drift.save()

    def _runtime_problems(self, door: str) -> list[str]:
        """What keeps the door from working now: the start's problems, then what failed since."""
        problems = list(self.problems[door])
        problems += [e for e in (self.guards.audit.write_error, self.guards.lockout.save_error) if e]
        problems += self.doors[door].drift.problems() if door in self.doors else []
        try:
            free = shutil.disk_usage(self.settings.data_dir).free
        except OSError as exc:
            problems.append(f"cannot read the data folder's free space: {exc.strerror}")
        else:
            if free < LOW_DISK_BYTES:
                problems.append(f"the data folder has only {free // 1_000_000} MB free: decisions may go unrecorded")
        return problems

    def _publish_sensors(self, door: Door, values: dict[str, object]) -> None:
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
        if self.remote is not None:
            self.remote.client.stop()
        if self.panel is not None:
            self.panel.stop()
        if self.snapshots is not None:
            self.snapshots.close()
        if self.guards.liveness is not None:
            self.guards.liveness.close()
        self.recognizer.close()  # closes the audit trail too
        if self.broker is not None:
            self.broker.stop()


class SensorPeriod:
    """One sensor period of a door: what its frames, gate and decisions measured since it began."""

    def __init__(self, stats: DoorStats) -> None:
        self.started, self.cpu = time.monotonic(), time.process_time()
        self.frames, self.gated = stats.frames, stats.gated

    def due(self) -> bool:
        return time.monotonic() - self.started >= SENSOR_PERIOD_S

    def values(self, stats: DoorStats) -> dict[str, object]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        frames = stats.frames - self.frames
        values: dict[str, object] = {
            "fps": frames / elapsed,
            "gate_pass_rate": 100.0 * (stats.gated - self.gated) / frames if frames else UNKNOWN,
            "cpu": 100.0 * (time.process_time() - self.cpu) / elapsed,  # process-wide, in % of one core
        }
        if not frames:
            values["decision_latency"] = UNKNOWN  # no camera, no decision: an old latency would mislead
        elif stats.last_latency_ms is not None:
            values["decision_latency"] = stats.last_latency_ms
        return values


def startup_problems(guards: Guards, cameras: list[CameraSettings]) -> dict[str, list[str]]:
    """What keeps each door from unlocking as the user expects: logged at every start and
    shown on the door's `problem` sensor."""
    shared = []
    if guards.liveness is None and guards.liveness_required:
        shared.append(LIVENESS_UNAVAILABLE)
        log.error("LIVENESS UNAVAILABLE: recognised faces are DENIED until liveness models are installed "
                  "(`facelock liveness download`; docs/LIVENESS.md)")  # fmt: skip
    elif not guards.liveness_required:
        log.warning("liveness.required is false: %s", "a printed photo of an enrolled person may unlock the door"
                    if guards.liveness is None else "the door would unlock without liveness models")  # fmt: skip
    problems = {}
    for camera in cameras:
        problems[camera.name] = list(shared)
        if not camera.can_unlock:
            problems[camera.name].append(UNTRUSTED_SOURCE.format(topic=camera.mqtt_topic))
            log.warning("door %s: fed by MQTT topic %s, not marked trusted: it reports decisions but never unlocks",
                        camera.name, camera.mqtt_topic)  # fmt: skip
    return problems


def remote_liveness(settings: Settings, local: LivenessModel | None) -> RemoteLiveness | None:
    """The door's liveness guard in remote/auto mode: CNN scores from the workers (and, in auto
    mode, from local models when no worker answers); None when the user turned liveness off."""
    if not settings.liveness.required and local is None:
        return None
    return RemoteLiveness(load_operating_point(), local if settings.verify.mode == "auto" else None)


def replay_camera(video: str, door: str, fps: float) -> CameraSettings:
    if not Path(video).exists() and "%" not in video:
        raise ConfigError(f"replay: {video} does not exist")
    try:
        return CameraSettings(name=door, url=video, fps=fps)
    except ValidationError as exc:  # named as the user typed them: --door, --fps
        flags = {("name",): "--door", ("fps",): "--fps"}
        problems = "; ".join(f"{flags.get(tuple(e['loc']), 'video')}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"replay: {problems}") from exc
