"""MQTT over TLS against a real Mosquitto started with a throw-away CA: password and client
certificate authentication, and setting errors that name the setting."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from conftest import Mosquitto
from mqtt_client import Collector, FakeRelay, wait_until
from pydantic import SecretStr

from facelock_mqtt.errors import ConfigError
from facelock_mqtt.homeassistant.bridge import HomeAssistantBridge
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
