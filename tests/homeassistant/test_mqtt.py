"""MQTT over TLS against a real Mosquitto started with a throw-away CA: password and client
certificate authentication, and setting errors that name the setting. An unreachable broker
(unknown host, closed port, refused credentials) is logged with its address and the reason, and
`facelock replay` exits with an error instead of deciding without one."""

from __future__ import annotations

import logging
import math
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from conftest import Mosquitto, free_port
from mqtt_client import Collector, FakeRelay, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import SecretStr

from facelock_mqtt.errors import BrokerUnavailable, ConfigError
from facelock_mqtt.homeassistant.bridge import HomeAssistantBridge
from facelock_mqtt.homeassistant.broker import AmqttBroker
from facelock_mqtt.homeassistant.mqtt import MqttConnection
from facelock_mqtt.homeassistant.topics import Topics
from facelock_mqtt.settings import LockSettings, MqttSettings

TOPICS = Topics()
FAST = LockSettings(relock_s=1.0, unlocking_s=0.1)


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def issue(folder: Path, name: str, subject: str, ext: str) -> None:
    """A key and a certificate signed by the test CA in `folder`."""
    (folder / f"{name}.ext").write_text(ext + "\n")
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        str(folder / f"{name}.key"),
        "-out",
        str(folder / f"{name}.csr"),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(folder / f"{name}.csr"),
        "-CA",
        str(folder / "ca.crt"),
        "-CAkey",
        str(folder / "ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(folder / f"{name}.ext"),
        "-out",
        str(folder / f"{name}.crt"),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    folder = tmp_path_factory.mktemp("pki")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=FaceLock test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        str(folder / "ca.key"),
        "-out",
        str(folder / "ca.crt"),
    )
    issue(folder, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    issue(folder, "client", "/CN=facelock", "extendedKeyUsage=clientAuth")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(folder / "passwd"), "facelock", "s3cret"], check=True)
    return folder


def tls_broker(tmp_path: Path, pki: Path, require_certificate: bool) -> Mosquitto:
    conf = (
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"require_certificate {str(require_certificate).lower()}\n"
        f"password_file {pki / 'passwd'}\nallow_anonymous false\nuser root\n"
    )
    broker = Mosquitto(tmp_path, extra_conf=conf)
    broker.start()
    return broker


def tls_bridge(broker: Mosquitto, pki: Path, password: str, base: str, cert: bool = False) -> HomeAssistantBridge:
    settings = MqttSettings(
        host=broker.host,
        port=broker.port,
        tls=True,
        ca_file=pki / "ca.crt",
        username="facelock",
        password=SecretStr(password),
        base_topic=base,
        client_id=base,
        cert_file=pki / "client.crt" if cert else None,
        key_file=pki / "client.key" if cert else None,
    )
    return HomeAssistantBridge(settings, ["front_door"], FAST, lambda door: FakeRelay())


def test_tls_with_username_and_password(tmp_path: Path, pki: Path) -> None:
    broker = tls_broker(tmp_path, pki, require_certificate=False)
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    watcher = Collector(broker.host, broker.port, ["+/availability"], tls=context, auth=("facelock", "s3cret"))
    good, bad = tls_bridge(broker, pki, "s3cret", "good"), tls_bridge(broker, pki, "wrong", "bad")
    try:
        good.start()
        bad.start()
        watcher.wait_for("good/availability", b"online")
        wait_until(lambda: bad.mqtt.stats["refused"] >= 1, what="wrong password refused")
        assert not bad.mqtt.connected.is_set() and watcher.on("bad/availability") == []
    finally:
        for bridge in (good, bad):
            bridge.stop()
        watcher.close()
        broker.stop()


def test_tls_with_client_certificate(tmp_path: Path, pki: Path) -> None:
    broker = tls_broker(tmp_path, pki, require_certificate=True)
    with_cert = tls_bridge(broker, pki, "s3cret", "withcert", cert=True)
    try:
        with_cert.start()
        wait_until(with_cert.mqtt.connected.is_set, what="TLS connection with a client certificate")
        assert with_cert.mqtt.stats["connects"] == 1
    finally:
        with_cert.stop()
        broker.stop()


def test_tls_settings_errors_name_the_setting(tmp_path: Path, pki: Path) -> None:
    missing = MqttSettings(host="127.0.0.1", tls=True, ca_file=tmp_path / "nope.crt")
    with pytest.raises(ConfigError, match="mqtt.ca_file"):
        MqttConnection(missing, TOPICS)
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="mqtt.tls"):
        MqttConnection(MqttSettings(host="127.0.0.1", tls=True, ca_file=tmp_path / "bad.crt"), TOPICS)
    with pytest.raises(ConfigError, match="mqtt.host"):
        MqttConnection(MqttSettings(), TOPICS)
    with pytest.raises(ValueError, match="tls"):
        MqttSettings(ca_file=pki / "ca.crt")


# --- an unreachable broker is never silent --------------------------------------------------------

REPORT_WITHIN_S = 5.0  # "within a few seconds" of starting, with headroom for a loaded machine


def refusing_broker(tmp_path: Path) -> Mosquitto:
    """A real Mosquitto that wants a password (anonymous clients are refused)."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "facelock", "s3cret"], check=True)
    broker = Mosquitto(tmp_path, extra_conf=f"password_file {passwd}\nallow_anonymous false\nuser root\n")
    broker.start()
    return broker


def unreachable(kind: str, tmp_path: Path) -> tuple[MqttSettings, str, Mosquitto | None]:
    """Settings for a broker that cannot be reached, the reason expected in the log, the broker."""
    if kind == "unknown host":
        return MqttSettings(host="nonexistent.invalid", port=1883), "cannot resolve the host name", None
    if kind == "closed port":
        return MqttSettings(host="127.0.0.1", port=free_port()), "connection refused", None
    broker = refusing_broker(tmp_path)
    settings = MqttSettings(host=broker.host, port=broker.port, username="facelock", password=SecretStr("wrong"))
    return settings, "the broker refused the connection: Not authorized", broker


KINDS = ["unknown host", "closed port", "refused credentials"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_broker_is_logged_with_its_address_and_reason(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings, reason, broker = unreachable(kind, tmp_path)
    connection = MqttConnection(settings, TOPICS)
    caplog.set_level(logging.INFO, logger="facelock_mqtt.homeassistant.mqtt")
    started = time.monotonic()
    connection.start()
    try:
        wait_until(lambda: connection.stats["failures"] >= 1, REPORT_WITHIN_S, f"a failure to be noticed ({kind})")
        took = time.monotonic() - started
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and f"cannot reach MQTT broker {settings.host}:{settings.port}: {reason}" in errors[0], errors
        with pytest.raises(BrokerUnavailable, match=f"cannot reach MQTT broker {settings.host}:{settings.port}: {reason}"):
            connection.wait_connected(0.1)
        print(f"\n{kind}: reported after {took:.2f} s: {errors[0]}")
        wait_until(lambda: connection.stats["failures"] >= 2, 10, "a retry after the backoff")
    finally:
        connection.stop()
        if broker is not None:
            broker.stop()
    assert not connection.connected.is_set()


def test_repeated_failures_are_logged_ever_more_rarely(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Attempts 1, 2, 4, 8...: a broker down for a day logs a few dozen lines, not thousands."""
    settings, reason, _ = unreachable("closed port", tmp_path)
    connection = MqttConnection(settings, TOPICS)
    caplog.set_level(logging.DEBUG, logger="facelock_mqtt.homeassistant.mqtt")
    client = connection._client  # the failure path paho calls, driven without waiting out its backoff
    client.failure = reason
    for _ in range(20):
        connection._on_connect_fail(client, None)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [int(m.split("attempt ")[1].split(";")[0]) for m in logged] == [1, 2, 4, 8, 16]
    client.failure = "no answer (connection timed out)"  # a new reason is always logged
    connection._on_connect_fail(client, None)
    assert "timed out) (attempt 21;" in [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR][-1]


@pytest.mark.parametrize("kind", KINDS)
def test_replay_exits_non_zero_when_no_broker_can_be_reached(kind: str, tmp_path: Path) -> None:
    settings, reason, broker = unreachable(kind, tmp_path)
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    env = {
        **os.environ,
        "FACELOCK_DATA_DIR": str(tmp_path / "data"),
        "FACELOCK_MQTT__HOST": settings.host,
        "FACELOCK_MQTT__PORT": str(settings.port),
        "FACELOCK_LIVENESS__MODELS": str(tmp_path / "no-liveness"),
    }
    if settings.username:
        env |= {"FACELOCK_MQTT__USERNAME": settings.username, "FACELOCK_MQTT__PASSWORD": "wrong"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "facelock_mqtt.cli", "replay", str(clip), "--door", "front"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        if broker is not None:
            broker.stop()
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-2000:]
    assert last.startswith(f"facelock: error: cannot reach MQTT broker {settings.host}:{settings.port}: {reason}"), last
    assert done.stdout == ""  # no decision was made without a broker


# --- MQTT 5: lock states expire where the broker supports it --------------------------------------


class V5Watcher:
    """A paho MQTT 5 subscriber keeping each message's expiry interval (None when it has none)."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.seen: list[tuple[bytes, int | None]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="v5-watcher", protocol=paho.MQTTv5)
        self.client.on_message = lambda c, u, m: self.seen.append(
            (m.payload, getattr(m.properties, "MessageExpiryInterval", None))
        )
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize("mqtt5", [True, False])
def test_unlocked_states_expire_on_an_mqtt5_broker(mosquitto: Mosquitto, mqtt5: bool) -> None:
    settings = MqttSettings(host=mosquitto.host, port=mosquitto.port, client_id=f"exp{mqtt5:d}", mqtt5=mqtt5)
    bridge = HomeAssistantBridge(settings, ["front_door"], FAST, lambda door: FakeRelay())
    watcher = V5Watcher(mosquitto, TOPICS.lock_state("front_door"))
    try:
        bridge.start()
        wait_until(bridge.mqtt.connected.is_set, what="the bridge to connect")
        assert bridge.mqtt.mqtt5 is mqtt5
        wait_until(lambda: watcher.seen, what="the announced state")
        bridge.locks["front_door"].unlock_for("alice")
        wait_until(lambda: [p for p, _ in watcher.seen].count(b"LOCKED") >= 2, what="the relock")
    finally:
        bridge.stop()
        watcher.close()
    expiry = math.ceil(FAST.unlocking_s + FAST.relock_s + 1.0)
    states = dict(reversed(watcher.seen))  # first expiry seen per state
    assert set(states) == {b"LOCKED", b"UNLOCKING", b"UNLOCKED"}
    assert states[b"LOCKED"] is None  # a locked door stays locked: that state never expires
    assert states[b"UNLOCKING"] == states[b"UNLOCKED"] == (expiry if mqtt5 else None)


def test_a_broker_that_ignores_mqtt5_gets_mqtt_3_1_1(caplog: pytest.LogCaptureFixture) -> None:
    """amqtt 0.12 leaves a version 5 CONNECT with a will unanswered: after one keep-alive the client
    tries 3.1.1 (and `mqtt.mqtt5: false` goes straight to it)."""
    broker = AmqttBroker("127.0.0.1", free_port())
    broker.start()
    connections = []
    try:
        for mqtt5 in (False, True):
            settings = MqttSettings(host=broker.host, port=broker.port, keepalive=5, client_id=f"v{mqtt5:d}", mqtt5=mqtt5)
            connections.append(MqttConnection(settings, TOPICS))
            connections[-1].start()
            started = time.monotonic()
            connections[-1].wait_connected(15)
            print(f"\nmqtt5={mqtt5}: connected in MQTT 3.1.1 after {time.monotonic() - started:.1f} s")
            assert not connections[-1].mqtt5
    finally:
        for connection in connections:
            connection.stop()
        broker.stop()
    assert "no answer to an MQTT 5 connection; trying 3.1.1" in caplog.text
