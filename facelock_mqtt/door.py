"""One door's pipeline: frame -> sanity -> gate -> detect/embed/match -> attempt -> guarded decision.

The only way to unlock is `_conclude` with a `recognized` decision that also passes stream
sanity, liveness (when installed), lockout, and a written audit record. Any exception on the way
leaves the door locked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .guards.audit import AuditLog
from .guards.liveness import LivenessModel
from .guards.lockout import Lockout
from .guards.streamcheck import StreamSanity
from .homeassistant.lock import DoorLock
from .pipeline.decide import Attempt, Decision, Observation, observe
from .pipeline.engine import FaceResult
from .pipeline.gate import expand_region
from .pipeline.imageio import encode_jpeg
from .pipeline.match import Identification
from .pipeline.ml_gate import build_gate
from .pipeline.source import Frame
from .recognizer import Recognizer
from .remote import EdgeVerifier, RemoteFailure
from .settings import CameraSettings, DecisionSettings, GateSettings

log = logging.getLogger(__name__)

REGION_GROWTH = 1.6  # the moving region is grown so a face at its edge is still whole
LIVENESS_UNAVAILABLE = (
    "liveness unavailable: no liveness models are installed, so a photo could not be told from a face "
    "(`facelock liveness download`, or set liveness.required: false to accept that risk)"
)
BROKER_UNAVAILABLE = "broker unavailable: nothing could drive the door, so it stayed locked"
UNTRUSTED_SOURCE = (
    "untrusted source: any MQTT client can publish to {topic}; restrict it with a broker ACL and set the "
    "camera's trusted: true to let it unlock (DOCS.md)"
)


@dataclass
class Guards:
    lockout: Lockout
    audit: AuditLog
    liveness: LivenessModel | None
    liveness_required: bool = True  # without a liveness model, a recognised face is denied


class Publisher(Protocol):
    """What a door needs from Home Assistant; the bridge implements it."""

    def publish_decision(self, door: str, event: dict, snapshot_jpeg: bytes | None = None) -> dict: ...

    def publish_motion(self, door: str, on: bool) -> None: ...

    @property
    def connected(self) -> bool: ...  # the broker is reachable: something can drive the door


@dataclass
class DoorStats:
    frames: int = 0
    gated: int = 0
    analysed: int = 0
    errors: int = 0
    stale: int = 0
    refused_sanity: int = 0
    refused_lockout: int = 0
    decisions: int = 0
    last_latency_ms: float | None = None


class Door:
    def __init__(
        self,
        camera: CameraSettings,
        gate: GateSettings,
        decision: DecisionSettings,
        recognizer: Recognizer,
        lock: DoorLock,
        guards: Guards,
        publisher: Publisher,
        on_event: Callable[[dict], None] | None = None,
    ) -> None:
        self.name = camera.name
        self.camera = camera
        self.settings = decision
        self.recognizer = recognizer
        self.lock = lock
        self.guards = guards
        self.publisher = publisher
        self.on_event = on_event
        self.gate = build_gate(gate, camera.mask)  # gate.kind: motion, ml or both (pipeline/ml_gate.py)
        self.sanity = StreamSanity(decision, camera.fps)
        self.stats = DoorStats()
        self.attempt: Attempt | None = None
        self.attempt_frames: list[tuple[np.ndarray, object]] = []
        self.first_capture: float | None = None
        self.cooldown_until = float("-inf")
        self.motion = False
        self.snapshots = None  # the panel's SnapshotStore (storage/snapshots.py), set by the service
        self.viewers = 0  # live-view clients of the panel; with none, the frame is not kept
        self.live: tuple | None = None  # (image, motion region, Identification | None) of the latest frame
        self._seen: tuple = (None, None)
        self.remote: EdgeVerifier | None = None  # verify.mode remote/auto (remote/edge.py), set by the service
        self.pending: list[tuple[np.ndarray, object, float]] = []  # remote: usable frames not yet sent
        self.gate_passed = False  # whether the gate let the last frame through
        self.drift = None  # the camera's DriftMonitor (guards/drift.py), set by the service; only observes

    @property
    def idle(self) -> bool:
        """Nothing to look at: the gate held the last frame back and no attempt is open. The
        source may then decode only keyframes (pipeline/av_source.py) or only its gate sub-stream
        (pipeline/gate_stream.py); never while the panel shows the camera (it wants the main stream)."""
        return not self.gate_passed and self.attempt is None and not self.viewers

    def clock(self, frame: Frame) -> float:
        """Video position in replay (so windows mean the same as live), capture time live."""
        return frame.pts if frame.pts is not None else frame.ts

    def process(self, frame: Frame) -> None:
        """Everything one frame causes. Never raises: an error ends the attempt, door locked."""
        self.stats.frames += 1
        self._seen = (None, None)
        try:
            self._process(frame)
            if self.viewers and not frame.gate_only:  # the panel (live view, enrolment) gets main frames
                self.live = (frame.image, *self._seen)
        except Exception as exc:
            self.stats.errors += 1
            if self.stats.errors == 1 or self.stats.errors % 100 == 0:  # a lasting fault must not flood the log
                log.exception("door %s: error on the decision path (%d so far); door stays locked", self.name, self.stats.errors)
            else:
                log.warning("door %s: error on the decision path: %s; door stays locked", self.name, exc)
            self._abandon()

    def finish(self, now: float) -> None:
        """Close a pending attempt (end of a replayed clip, or shutdown)."""
        self._send_pending(now)
        if self.attempt is not None:
            decision = self.attempt.close(now)
            if decision is not None:
                self._conclude(decision)

    def _process(self, frame: Frame) -> None:
        now = self.clock(frame)
        if frame.pts is None and time.monotonic() - frame.ts > self.settings.max_latency_s:
            self.stats.stale += 1  # an old frame must never open the door
            return
        gated = self.gate.update(frame.image, now)
        self.gate_passed = gated.passed
        self._seen = (gated.region, None)
        self._set_motion(gated.motion)
        if self.drift is not None:
            self.drift.observe_gate(gated.passed)
        if self.attempt is not None and self.attempt.expired(now):
            self._send_pending(now)
        if self.attempt is not None and self.attempt.expired(now):
            self._conclude(self.attempt.close(now))
        if frame.gate_only:  # a gate_url sub-stream frame may wake the door, never reach a decision
            return
        # A person standing still in front of the door stops the motion; their attempt goes on.
        if (not gated.passed and self.attempt is None) or now < self.cooldown_until:
            return
        self.stats.gated += 1
        sanity = self.sanity.check(frame.image)
        if not sanity.ok:
            self.stats.refused_sanity += 1
            if self.attempt is not None:
                log.warning("door %s: %s; attempt refused", self.name, sanity.reason)
                self._abandon()
            return
        if self.guards.lockout.status(self.name).locked:
            self.stats.refused_lockout += 1
            return
        region = expand_region(gated.region, frame.image.shape, REGION_GROWTH) if gated.region else None
        self.stats.analysed += 1
        located = self.recognizer.locate(frame.image, region)
        if located is None and region is not None and self.attempt is not None:
            located = self.recognizer.locate(frame.image)  # the face may stand still outside the motion
        # Remote mode: the door locates, the workers embed and match (remote/edge.py).
        found = self._identify(frame.image, located) if self.remote is None else Identification(located, None)
        self._seen = (gated.region, found)
        if found.result is None:
            return
        if self.drift is not None:
            self.drift.observe_face(found.result)
        if self.attempt is None:
            matcher = self.recognizer.matcher
            self.attempt = Attempt(self.settings, matcher.threshold.threshold, matcher.target_far)
            self.first_capture = frame.ts
            self.attempt_frames = []
        if self.remote is not None:
            self._remote_frame(frame.image, found, now)
            return
        observation = observe(found, now)
        if observation.usable:
            self.attempt_frames.append((frame.image, found.result.face))
        decision = self.attempt.add(observation)
        if decision is not None and not self._waits_for_life(decision):
            self._conclude(decision)

    def _identify(self, image: np.ndarray, located: FaceResult | None) -> Identification:
        """Embed and match a located face. A face that can count gets its liveness evidence
        taken on a worker meanwhile (guards/liveness.py `prepare`): the decision then finds it
        taken instead of running the liveness CNN and the flow after the embedding, on the
        unlock's critical path (measured: ~19 ms a decision on 2 cores)."""
        liveness = self.guards.liveness
        taking = None
        if located is not None and located.quality.ok and liveness is not None:
            taking = liveness.prepare(self.attempt_frames if self.attempt is not None else [], image, located.face)
        found = self.recognizer.identify_located(located)
        if taking is not None:
            taking.result()  # an error there is an error on the decision path: the door stays locked
        return found

    def _remote_frame(self, image: np.ndarray, found, now: float) -> None:
        """Remote mode: a usable face waits until enough of them can decide, then they go out
        in one request (remote/edge.py); a poor one counts at once, as it does locally."""
        if not found.result.quality.ok:
            decision = self.attempt.add(observe(found, now))
            if decision is not None:
                self._conclude(decision)
            return
        self.attempt_frames.append((image, found.result.face))
        self.pending.append((image, found.result, now))
        if self.remote.due(self.attempt, self.pending, self.attempt_frames, self.guards.liveness):
            self._send_pending(now)

    def _send_pending(self, now: float) -> None:
        """Send the held-back frames; any remote failure denies the attempt with its reason."""
        pending, self.pending = self.pending, []
        if not pending or self.attempt is None or self.remote is None:
            return
        try:
            found = self.remote.identify(self.name, pending, self.recognizer.matcher, self.guards.liveness)
        except RemoteFailure as exc:
            log.warning("door %s: remote verification failed: %s; door stays locked", self.name, exc)
            for _, result, t in pending:  # seen, never judged: frames of the attempt, not matches
                face = result.face
                self.attempt.observations.append(Observation(t, None, None, False, "not verified", face.landmarks, face.box))
            denied = self.attempt.close(now)
            self._conclude(dataclasses.replace(denied, outcome="denied", person=None, reason=f"remote verification: {exc}"))
            return
        for identification, (_, _, t) in zip(found, pending, strict=True):  # frame by frame, as locally
            decision = self.attempt.add(observe(identification, t))
            if decision is not None and not self._waits_for_life(decision):
                self._conclude(decision)
                return

    def _set_motion(self, motion: bool) -> None:
        if motion != self.motion:
            self.motion = motion
            self.publisher.publish_motion(self.name, motion)

    def _waits_for_life(self, decision: Decision) -> bool:
        """A recognised face that has not moved yet: take another frame (up to LIFE_MAX_FRAMES)
        rather than judge it still now. A live face moves within a few frames; a picture never
        does. The attempt's window still bounds the wait."""
        liveness = self.guards.liveness
        return decision.outcome == "recognized" and liveness is not None and liveness.wants_more_frames(self.attempt_frames)

    def _guard_recognition(self, frames: list[tuple[np.ndarray, object]], reason: str) -> tuple[str, str, object]:
        """(outcome, reason, liveness result) for a face the matcher recognised: it unlocks only
        from a source that can unlock, and (unless the user opted out) after a liveness check."""
        liveness = None
        if self.guards.liveness is not None:
            liveness = self.guards.liveness.assess(frames)  # every usable frame: more motion evidence
            if not liveness.live:
                return "spoof_suspected", "liveness: " + "; ".join(liveness.reasons), liveness
        elif self.guards.liveness_required:
            return "denied", LIVENESS_UNAVAILABLE, None
        if not self.camera.can_unlock:
            return "denied", UNTRUSTED_SOURCE.format(topic=self.camera.mqtt_topic), liveness
        return "recognized", reason, liveness

    def _abandon(self) -> None:
        self.attempt = None
        self.attempt_frames = []
        self.pending = []

    def _conclude(self, decision: Decision) -> None:
        frames, self.attempt_frames = self.attempt_frames, []
        self.attempt, self.pending = None, []
        self.cooldown_until = decision.ended + self.settings.cooldown_s
        latency_ms = 1000 * (time.monotonic() - self.first_capture) if self.first_capture is not None else None
        self.stats.decisions += 1
        self.stats.last_latency_ms = latency_ms
        outcome, reason, liveness = self._verdict(decision, frames)
        event = self._event(decision, outcome, reason, liveness, latency_ms)
        # Counted before anything is written: a full disk must not stop failures counting (in memory).
        failed = outcome == "spoof_suspected" or (outcome == "denied" and decision.failed)
        lockout = self.guards.lockout.record_failure(self.name) if failed else None
        # The audit record is written before the door moves: no unlock goes unrecorded.
        record = self.guards.audit.append(
            outcome, camera=self.name, person=event["person"], details=self._details(decision, event)
        )
        # Encoded before the door moves, so that the decision goes out right behind the lock state.
        snapshot = self._snapshot(frames, decision)
        if outcome == "recognized":
            self.guards.lockout.record_success(self.name)
            if not self.lock.unlock_for(decision.person or "?"):
                event["reason"] += "; the lock did not release"
        if lockout is not None:
            self.guards.audit.append("lockout", camera=self.name, details=lockout.payload())
            self.publisher.publish_decision(self.name, {"event_type": "lockout", "camera": self.name, **lockout.payload()})
        self.publisher.publish_decision(self.name, event, snapshot)
        if self.snapshots is not None and frames:
            self.snapshots.save(record.seq, *frames[-1])  # queued: never delays the door
        if self.drift is not None:
            self.drift.observe_decision(event)
        if self.on_event is not None:
            self.on_event(event)
        if outcome == "recognized" and liveness is not None and self.recognizer.match_settings.adaptive_templates:
            self._adapt(decision.person, frames, liveness.score)

    def _adapt(self, person: str, frames: list[tuple[np.ndarray, object]], liveness_score: float) -> None:
        """A guarded template update from this unlock (recognizer.guarded_update), after the door moved."""
        threshold = self.guards.liveness.point.threshold
        update = self.recognizer.guarded_update(person, frames, liveness_score, threshold, self.settings.k, self.name)
        log.info("door %s: adaptive template for %s %s", self.name, person, "added" if update.added else "not added: " + update.reason)

    def _verdict(self, decision: Decision, frames: list[tuple[np.ndarray, object]]) -> tuple[str, str, object]:
        """(outcome, reason, liveness result): the attempt's decision after the guards."""
        outcome, reason, liveness = decision.outcome, decision.reason, None
        if outcome == "recognized":
            outcome, reason, liveness = self._guard_recognition(frames, reason)
        if outcome == "recognized" and not self.publisher.connected:
            outcome, reason = "denied", BROKER_UNAVAILABLE  # an unlock Home Assistant would see late
        return outcome, reason, liveness

    def _event(self, decision: Decision, outcome: str, reason: str, liveness, latency_ms: float | None) -> dict:
        accepted = outcome == "recognized"
        return {
            "event_type": outcome,
            "person": decision.person if accepted else None,  # a refused face names nobody...
            "candidate": None if accepted else decision.candidate,  # ...but says whom it looked like
            "score": None if decision.score is None else round(decision.score, 4),
            "threshold": round(decision.threshold, 4),
            "far_target": decision.target_far,
            "frames_used": decision.frames_used,
            "latency_ms": None if latency_ms is None else round(latency_ms, 1),
            "camera": self.name,
            "reason": reason,
            "liveness": None if liveness is None else round(liveness.score, 3),
            "life_motion": None if liveness is None or liveness.life_motion is None else round(liveness.life_motion, 4),
        }

    @staticmethod
    def _details(decision: Decision, event: dict) -> dict:
        return {
            **event,
            "scores": [None if o.score is None else round(o.score, 4) for o in decision.observations],
            "reasons": [o.reason for o in decision.observations],
            "frames_seen": decision.frames_seen,
        }

    @staticmethod
    def _snapshot(frames: list[tuple[np.ndarray, object]], decision: Decision) -> bytes | None:
        if not frames:
            return None
        image, face = frames[-1]
        picture = image.copy()
        x, y, w, h = (int(v) for v in face.box)
        colour = (0, 200, 0) if decision.outcome == "recognized" else (0, 0, 230)
        cv2.rectangle(picture, (x, y), (x + w, y + h), colour, 2)
        return encode_jpeg(picture)
