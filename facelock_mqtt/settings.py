"""All of FaceLock's settings, typed, in one place.

Sources, highest priority first: CLI flags (passed as keyword arguments), environment variables
(`FACELOCK_*`, nested with `__`, e.g. `FACELOCK_MQTT__HOST`), the add-on's `/data/options.json`
(or the file named by `FACELOCK_OPTIONS_FILE`), then the defaults below. Each stage receives only
its own section. A wrong value fails at start with the setting's name and the reason.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError

DEFAULT_OPTIONS_FILE = Path("/data/options.json")
_DEVICE_URL = re.compile(r"^(/dev/video\d+|\d+)$")  # a local camera (pipeline/source.py reads it with OpenCV)


class Section(BaseModel):
    """A closed settings section: an unknown key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """The add-on UI saves a cleared optional text field as "": treat it as not set."""
        if not isinstance(data, dict):
            return data
        optional = {name for name, field in cls.model_fields.items() if field.default is None}
        return {k: None if v == "" and k in optional else v for k, v in data.items()}


class ModelSettings(Section):
    bundle: Path | None = Field(
        None,
        description="Folder of a model bundle (manifest.json) or an insightface model pack; "
        "empty serves the default YuNet + SFace bundle.",
    )
    threads: int = Field(2, ge=1, le=64, description="CPU threads for each ONNX model.")
    detect_size: int = Field(
        640, ge=128, le=1920, description="Longest side, in pixels, frames are scaled to for face detection."
    )
    min_detection_score: float = Field(0.6, ge=0.1, le=0.99, description="Detector confidence below which a box is ignored.")
    max_batch: int = Field(
        1,
        ge=1,
        le=64,
        description="Most faces embedded in one run when several doors see faces at the same moment (a face "
        "alone always goes at once); 1, the default, runs every face on its own: batching gained nothing on a "
        "2-core CPU (docs/BENCHMARKS.md, Many doors).",
    )
    int8_embedder: bool = Field(
        False,
        description="Serve the default bundle's face embedder as an int8 graph with its own calibration: about "
        "1.5x less CPU per face, but it accepts fewer webcam frames of enrolled people (docs/RESULTS.md).",
    )


class QualitySettings(Section):
    min_face_px: int = Field(40, ge=16, le=1000, description="Smallest face (inter-ocular box side) accepted, in pixels.")
    min_blur: float = Field(
        15.0, ge=0.0, description="Least Laplacian variance of the aligned face; lower is too blurred."
    )
    min_brightness: float = Field(40.0, ge=0.0, le=255.0, description="Least mean brightness of the aligned face.")
    max_brightness: float = Field(225.0, ge=0.0, le=255.0, description="Greatest mean brightness of the aligned face.")
    max_yaw: float = Field(
        0.35, ge=0.0, le=1.0, description="Greatest head-turn proxy (nose offset from the eye midline / eye distance)."
    )

    @model_validator(mode="after")
    def _brightness_range(self) -> QualitySettings:
        if self.min_brightness >= self.max_brightness:
            raise ValueError("min_brightness must be below max_brightness")
        return self


class MatchSettings(Section):
    # Per comparison. An attempt compares a probe with every template and its frames are
    # strongly correlated, so the attempt's false-accept rate is bounded by about
    # templates x target_far: 1e-6 keeps a 100-template gallery under 1 in 10,000.
    target_far: float = Field(
        1e-6,
        gt=0.0,
        lt=0.01,
        description="False-accept rate per comparison the threshold is calibrated for (1e-6 = one in a million).",
    )
    min_margin: float = Field(
        0.05, ge=0.0, le=1.0, description="Least cosine margin of the best person over the second-best person."
    )
    adaptive_templates: bool = Field(
        False,
        description="After an unlock that passed liveness and matched with margin, add the face as an adaptive "
        "template (at most 3 per person, each must still match the enrollment photos) so that the gallery follows "
        "slow changes (docs/DRIFT.md).",
    )


class MqttSettings(Section):
    host: str | None = Field(
        None, description="MQTT broker host; empty starts an embedded broker on localhost (or uses the Supervisor's)."
    )
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port.")
    username: str | None = Field(None, description="MQTT user name.")
    password: SecretStr | None = Field(None, description="MQTT password.")
    tls: bool = Field(False, description="Connect to the broker over TLS.")
    ca_file: Path | None = Field(None, description="CA certificate file for TLS.")
    cert_file: Path | None = Field(None, description="Client certificate file for TLS.")
    key_file: Path | None = Field(None, description="Client key file for TLS.")
    base_topic: str = Field("facelock", pattern=r"^[A-Za-z0-9_\-/]+$", description="Prefix of FaceLock's topics.")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_\-/]+$", description="Home Assistant discovery prefix.")
    client_id: str = Field("facelock", pattern=r"^[A-Za-z0-9_\-]+$", description="MQTT client id.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keep-alive, seconds.")
    mqtt5: bool = Field(
        True,
        description="Connect with MQTT 5 (lock states then carry a message expiry), falling back to 3.1.1 when "
        "the broker refuses it; false connects with 3.1.1 only, for a broker that never answers version 5.",
    )

    @model_validator(mode="after")
    def _client_cert_pair(self) -> MqttSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file, cert_file and key_file need tls: true")
        return self


class GateSettings(Section):
    enabled: bool = Field(True, description="Run face detection only on frames with motion.")
    height: int = Field(100, ge=32, le=720, description="Height, in pixels, frames are scaled to for motion detection.")
    alpha: float = Field(0.02, gt=0.0, le=1.0, description="Background learning rate of the running average.")
    pixel_threshold: int = Field(25, ge=1, le=255, description="Least grey-level change of a moving pixel.")
    min_area: float = Field(
        0.005, gt=0.0, lt=1.0, description="Least fraction of the frame a moving region must cover."
    )
    lighting_fraction: float = Field(
        0.6, gt=0.0, le=1.0, description="Changed fraction of the frame above which the change is lighting, not motion."
    )
    hold_s: float = Field(1.0, ge=0.0, le=60.0, description="Seconds the gate stays open after the last motion.")
    kind: Literal["motion", "ml", "both"] = Field(
        "motion",
        description="Which gate decides that a frame is worth a face search: motion (pixel change), ml (a tiny "
        "network that tells a person at the door, `training/activity_gate.py`), or both (the network judges only "
        "frames the motion gate passed). docs/BENCHMARKS.md compares them.",
    )
    ml_model: Path | None = Field(
        None, description="Folder of the exported activity-gate bundle (manifest.json + ONNX) for kind ml or both."
    )

    @model_validator(mode="after")
    def _ml_needs_model(self) -> GateSettings:
        if self.kind != "motion" and self.ml_model is None:
            raise ValueError(f"kind {self.kind} needs ml_model (an exported activity-gate bundle)")
        return self


class CameraSettings(Section):
    name: str = Field(..., pattern=r"^[a-z0-9_]+$", description="Door name (lower-case letters, digits, _).")
    url: str | None = Field(None, description="OpenCV source: rtsp://, http:// MJPEG, a video file or /dev/videoN.")
    mqtt_topic: str | None = Field(None, description="MQTT topic carrying JPEG snapshots (e.g. Frigate's).")
    trusted: bool = Field(
        False,
        description="Let faces from mqtt_topic unlock. Any broker client can publish there: set true only after a "
        "broker ACL lets just the camera's publisher write the topic (DOCS.md). Stream URLs are always trusted.",
    )
    fps: float = Field(
        10.0, gt=0.0, le=60.0, description="Frames per second taken from the source (10 or more keeps unlocks fast)."
    )
    mask: list[list[list[int]]] = Field(
        default_factory=list, description="Polygons ([[x, y], ...], frame pixels) where motion is ignored."
    )
    reconnect_max_s: float = Field(
        30.0,
        ge=1.0,
        le=600.0,
        description="Longest wait, in seconds, between attempts to reopen a camera that dropped or failed to "
        "open; the wait starts at half a second and doubles after each failure.",
    )
    idle_keyframes: bool = Field(
        False,
        description="While nobody is at the door, decode only the url stream's keyframes (needs PyAV and a camera "
        "I-frame interval of 1 s or less): several times less CPU per idle camera, but the first decision can "
        "come up to one I-frame interval later.",
    )
    gate_url: str | None = Field(
        None,
        description="A low-resolution sub-stream of the SAME camera as url (most IP cameras' second RTSP profile, "
        "e.g. 640x360 or smaller, same aspect ratio), used only by the motion gate while nobody is at the door; url "
        "is then only read, not decoded, until motion, when its frames since the last keyframe are decoded (at most "
        "one frame interval later). Cuts an idle camera's decoding several-fold; needs PyAV. If it fails, url is "
        "decoded in full, as without it.",
    )
    max_snapshot_pixels: int = Field(
        40_000_000,
        ge=100_000,
        le=500_000_000,
        description="Largest snapshot from mqtt_topic, in pixels (width x height), that is decoded; a larger one "
        "(or one whose JPEG/PNG header cannot be read) is refused from its header, before decoding.",
    )

    @property
    def can_unlock(self) -> bool:
        """A stream URL is the camera itself; an MQTT topic only when the user vouches for its ACL."""
        return self.url is not None or self.trusted

    @model_validator(mode="after")
    def _one_source(self) -> CameraSettings:
        if (self.url is None) == (self.mqtt_topic is None):
            raise ValueError(f"camera {self.name!r}: set exactly one of url and mqtt_topic")
        if self.gate_url is not None and (self.url is None or _DEVICE_URL.match(self.url)):
            raise ValueError(f"camera {self.name!r}: gate_url needs a stream or file url (not mqtt_topic or a device)")
        if self.gate_url is not None and self.idle_keyframes:
            raise ValueError(f"camera {self.name!r}: set at most one of gate_url and idle_keyframes")
        for polygon in self.mask:
            if len(polygon) < 3 or any(len(point) != 2 for point in polygon):
                raise ValueError(f"camera {self.name!r}: each mask polygon needs at least 3 [x, y] points")
        return self


class DecisionSettings(Section):
    k: int = Field(2, ge=1, le=20, description="Matching frames needed within an attempt.")
    n: int = Field(5, ge=1, le=50, description="Frames with a face an attempt looks at.")
    window_s: float = Field(4.0, gt=0.0, le=60.0, description="Seconds an attempt lasts before it times out.")
    cooldown_s: float = Field(5.0, ge=0.0, le=600.0, description="Seconds after a decision before a new attempt starts.")
    max_latency_s: float = Field(
        2.0, gt=0.0, le=30.0, description="A frame older than this when processed is dropped, never used to unlock."
    )
    stream_history_s: float = Field(
        60.0,
        ge=1.0,
        le=600.0,
        description="Seconds of recent frames each new frame is compared with to spot a frozen or looping camera "
        "stream (a loop longer than this is not recognised as one).",
    )

    @model_validator(mode="after")
    def _k_within_n(self) -> DecisionSettings:
        if self.k > self.n:
            raise ValueError("k must not exceed n")
        return self


class LockSettings(Section):
    relock_s: float = Field(5.0, ge=1.0, le=3600.0, description="Seconds until the door relocks after an unlock.")
    unlocking_s: float = Field(
        0.0,
        ge=0.0,
        le=30.0,
        description="Actuation time of your door strike: seconds the lock reports UNLOCKING before UNLOCKED "
        "(0: UNLOCKED at once, as soon as the relay is energised).",
    )
    pin: SecretStr | None = Field(
        None,
        description="PIN (4 to 12 digits) Home Assistant must send with a remote UNLOCK or OPEN; "
        "empty: remote UNLOCK and OPEN are refused unless allow_remote_without_pin is true.",
    )
    allow_remote_without_pin: bool = Field(
        False,
        description="With no PIN set, accept remote UNLOCK, OPEN and lockout clears from any MQTT client that can "
        "publish to FaceLock's topics. Off by default: set a PIN instead.",
    )

    @model_validator(mode="after")
    def _pin_digits(self) -> LockSettings:
        if self.pin is not None and not re.fullmatch(r"\d{4,12}", self.pin.get_secret_value()):
            raise ValueError("pin must be 4 to 12 digits")
        return self


class LockoutSettings(Section):
    max_failures: int = Field(
        5,
        ge=1,
        le=100,
        description="Failed attempts (denied or spoof suspected) within lockout.window_s (default 600 s, ten "
        "minutes) that lock a door out.",
    )
    window_s: float = Field(600.0, ge=1.0, le=86400.0, description="Seconds over which failed attempts are counted.")
    base_s: float = Field(30.0, ge=1.0, le=86400.0, description="Length of the first lockout; each further one doubles.")
    max_s: float = Field(3600.0, ge=1.0, le=604800.0, description="Longest lockout, in seconds.")
    reset_s: float = Field(
        86400.0,
        ge=60.0,
        le=2592000.0,
        description="Seconds after a lockout ends without another one, after which lockouts start again at base_s.",
    )

    @model_validator(mode="after")
    def _base_within_max(self) -> LockoutSettings:
        if self.base_s > self.max_s:
            raise ValueError("base_s must not exceed max_s")
        return self


class AuditSettings(Section):
    retention_days: int = Field(
        90, ge=1, le=3650, description="Days a decision stays in the audit trail before it is pruned."
    )


class LivenessSettings(Section):
    models: Path | None = Field(
        None,
        description="Folder of the installed liveness models (`facelock liveness install`, docs/LIVENESS.md); "
        "empty uses <data_dir>/liveness.",
    )
    required: bool = Field(
        True,
        description="Unlock only after a liveness check: without usable liveness models a recognised face is "
        "denied. false lets a printed photo of an enrolled person open the door.",
    )


class DriftSettings(Section):
    enabled: bool = Field(True, description="Watch each camera for drift (light, focus, aim, scores) against its own first days.")
    reference_samples: int = Field(
        300, ge=10, le=100_000, description="Observations per statistic in a camera's reference (its first ones)."
    )
    reference_days: float = Field(
        3.0, ge=0.0, le=90.0, description="Least days a camera's reference spans, so it holds days and nights."
    )
    window: int = Field(500, ge=10, le=100_000, description="Observations the rolling (recent) statistics cover.")
    min_samples: int = Field(50, ge=5, le=100_000, description="Least recent observations before a statistic is judged.")
    psi_watch: float = Field(0.1, gt=0.0, le=10.0, description="PSI (above its sampling noise) from which a statistic is watched.")
    psi_act: float = Field(
        0.25, gt=0.0, le=10.0, description="PSI (above its sampling noise) from which a statistic has drifted: the "
        "door's problem sensor turns on with the reason.",
    )

    @model_validator(mode="after")
    def _watch_below_act(self) -> DriftSettings:
        if self.psi_watch > self.psi_act:
            raise ValueError("psi_watch must not exceed psi_act")
        return self


class WebSettings(Section):
    enabled: bool = Field(True, description="Serve the owner's panel (in the add-on: the FaceLock page in the sidebar).")
    host: str = Field(
        "127.0.0.1",
        description="Address the panel listens on outside the add-on (inside, it listens for the ingress proxy only).",
    )
    port: int = Field(8099, ge=1, le=65535, description="Port of the panel outside the add-on (ingress uses 8099).")
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, le=200 * 1024 * 1024, description="Largest photo upload the panel accepts, in bytes."
    )
    max_upload_pixels: int = Field(
        40_000_000, ge=10_000, le=200_000_000, description="Largest photo the panel decodes, in pixels (width x height)."
    )


class VerifySettings(Section):
    """Where faces are verified: at the door, or by `facelock worker` processes over MQTT (docs/REMOTE.md)."""

    mode: Literal["local", "remote", "auto"] = Field(
        "local",
        description="local: verify at the door; remote: send each attempt's face crops to `facelock worker` "
        "processes over the MQTT broker (MQTT 5); auto: remote, and local when no worker answers in time.",
    )
    group: str = Field(
        "facelock", pattern=r"^[A-Za-z0-9_\-]+$", description="Shared-subscription group the workers join."
    )
    deadline_s: float = Field(
        2.0, gt=0.0, le=30.0, description="Seconds a door waits for a worker's answer; none in time denies."
    )
    max_age_s: float = Field(
        10.0, gt=0.0, le=300.0, description="Oldest signed request or answer accepted (clock skew included)."
    )
    secret: SecretStr | None = Field(
        None, description="Shared secret signing requests, answers and the gallery (HMAC-SHA256), 16+ characters."
    )

    @model_validator(mode="after")
    def _secret_for_remote(self) -> VerifySettings:
        if self.mode != "local" and self.secret is None:
            raise ValueError(f"mode {self.mode} needs a secret (verify.secret / FACELOCK_VERIFY__SECRET)")
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret must have at least 16 characters")
        return self


class _OptionsFile(JsonConfigSettingsSource):
    """The options file holds one JSON object; anything else (an array, a number) is a one-line error."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        try:
            data = super()._read_file(file_path)
        except ValueError as exc:  # bad JSON or bad UTF-8
            raise ConfigError(f"options file {file_path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            kind = {list: "an array", str: "a string", bool: "true/false"}.get(type(data), "a number or null")
            raise ConfigError(f"options file {file_path}: must hold a JSON object ({{...}}), not {kind}")
        return data


class Settings(BaseSettings):
    """The whole configuration of a FaceLock service."""

    model_config = SettingsConfigDict(
        env_prefix="FACELOCK_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(
        Path.home() / ".local" / "share" / "facelock", description="Folder for the gallery, caches and logs."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    model: ModelSettings = ModelSettings()
    quality: QualitySettings = QualitySettings()
    match: MatchSettings = MatchSettings()
    mqtt: MqttSettings = MqttSettings()
    gate: GateSettings = GateSettings()
    cameras: list[CameraSettings] = Field(default_factory=list, description="Door cameras.")
    decision: DecisionSettings = DecisionSettings()
    lock: LockSettings = LockSettings()
    lockout: LockoutSettings = LockoutSettings()
    audit: AuditSettings = AuditSettings()
    liveness: LivenessSettings = LivenessSettings()
    web: WebSettings = WebSettings()
    drift: DriftSettings = DriftSettings()
    verify: VerifySettings = VerifySettings()

    @model_validator(mode="after")
    def _unique_doors(self) -> Settings:
        names = [c.name for c in self.cameras]
        if len(names) != len(set(names)):
            raise ValueError("camera names must be unique")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        options = Path(os.environ.get("FACELOCK_OPTIONS_FILE", DEFAULT_OPTIONS_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if options.is_file():
            sources.append(_OptionsFile(settings_cls, json_file=options))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; raise ConfigError naming each wrong setting and why."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
    except ValueError as exc:  # e.g. unreadable JSON in the options file
        raise ConfigError(f"invalid settings: {exc}") from exc
