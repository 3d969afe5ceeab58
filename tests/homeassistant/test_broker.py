"""The embedded MQTT broker, exercised with real paho clients and raw sockets."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from conftest import free_port
from mqtt_client import (
    Collector,
    raw_connect,
    raw_publish,
    raw_socket,
    read_until_closed,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion

from facelock_mqtt.errors import ConfigError
from facelock_mqtt.homeassistant.bridge import HomeAssistantBridge
from facelock_mqtt.homeassistant.broker import EmbeddedBroker, embedded_broker_for
from facelock_mqtt.settings import LockSettings, MqttSettings

CONNACK_OK = b"\x20\x02\x00\x00"


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0, max_packet=64 * 1024) as running:
        yield running


@pytest.fixture
def publisher(broker: EmbeddedBroker) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    client.connect(broker.host, broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def send(client: paho.Client, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
    client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)  # QoS 1: waits for PUBACK


def test_pub_sub_delivers_at_the_lower_qos(broker: EmbeddedBroker, publisher: paho.Client) -> None:
    qos1 = Collector(broker.host, broker.port, ["t/one"])
    qos0 = Collector(broker.host, broker.port, ["t/one"], qos=0)
    send(publisher, "t/one", b"first", qos=1)
    send(publisher, "t/one", b"second", qos=0)
    qos1.wait_for("t/one", count=2)
    qos0.wait_for("t/one", count=2)
    assert [(m.payload, m.qos, m.retain) for m in qos1.on("t/one")] == [(b"first", 1, False), (b"second", 0, False)]
    assert [m.qos for m in qos0.on("t/one")] == [0, 0]


def test_wildcards_match_like_mqtt_311(broker: EmbeddedBroker, publisher: paho.Client) -> None:
    sub = Collector(broker.host, broker.port, ["a/+/c", "x/#", "#"])
    hash_only = Collector(broker.host, broker.port, ["x/#", "a/+/c"])
    for topic in ("a/b/c", "a/b/d", "a/b/c/d", "x", "x/y/z", "$SYS/info", "done"):
        send(publisher, topic, topic.encode())
    sub.wait_for("done")
    send(publisher, "x/end", b"end")
    hash_only.wait_for("x/end")
    assert {m.topic for m in hash_only.messages} == {"a/b/c", "x", "x/y/z", "x/end"}
    assert "$SYS/info" not in {m.topic for m in sub.messages}  # `#` does not match $-topics
    assert len(sub.on("x/y/z")) == 1  # overlapping filters deliver once


def test_retained_message_reaches_late_subscribers_and_empty_payload_deletes(
    broker: EmbeddedBroker, publisher: paho.Client
) -> None:
    send(publisher, "state/door", b"LOCKED", retain=True)
    late = Collector(broker.host, broker.port, ["state/#"])
    assert late.wait_for("state/door") == [late.on("state/door")[0]]
    assert late.on("state/door")[0].retain and late.on("state/door")[0].payload == b"LOCKED"

    send(publisher, "state/door", b"", retain=True)
    later = Collector(broker.host, broker.port, ["state/#"])
    send(publisher, "state/marker", b"m")
    later.wait_for("state/marker")
    assert later.on("state/door") == []


def test_unsubscribe_stops_delivery(broker: EmbeddedBroker, publisher: paho.Client) -> None:
    sub = Collector(broker.host, broker.port, ["u/a", "u/b"])
    done = []
    sub.client.on_unsubscribe = lambda *args: done.append(True)
    sub.client.unsubscribe("u/a")
    wait_until(lambda: done, what="UNSUBACK")
    send(publisher, "u/a", b"gone")
    send(publisher, "u/b", b"here")
    sub.wait_for("u/b")
    assert sub.on("u/a") == []


def test_last_will_on_abnormal_disconnect_only(broker: EmbeddedBroker) -> None:
    watcher = Collector(broker.host, broker.port, ["will/#"])
    clean = paho.Client(CallbackAPIVersion.VERSION2, client_id="clean")
    clean.will_set("will/clean", b"offline", qos=1, retain=True)
    clean.connect(broker.host, broker.port)
    clean.loop_start()
    wait_until(clean.is_connected, what="clean client")
    clean.disconnect()
    clean.loop_stop()

    dying = raw_socket(broker.host, broker.port, raw_connect("dying", will=("will/dying", b"offline")))
    assert dying.recv(4) == CONNACK_OK
    dying.close()  # no DISCONNECT packet: abnormal
    watcher.wait_for("will/dying", b"offline")
    send_marker = Collector(broker.host, broker.port, [])
    send(send_marker.client, "will/marker", b"m")
    watcher.wait_for("will/marker")
    assert watcher.on("will/clean") == []


def test_keepalive_timeout_closes_the_client_and_sends_its_will(broker: EmbeddedBroker) -> None:
    watcher = Collector(broker.host, broker.port, ["will/#"])
    silent = raw_socket(broker.host, broker.port, raw_connect("silent", keepalive=1, will=("will/silent", b"gone")))
    assert read_until_closed(silent) == CONNACK_OK  # closed by the broker after 1.5 x keep-alive
    watcher.wait_for("will/silent", b"gone")
    assert broker.stats["timeouts"] == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\x13garbage",  # not a CONNECT
        b"\x10\xff\xff\xff\xff\x01",  # remaining length over 4 bytes
        b"\x10\xff\xff\xff\x7f",  # 256 MB announced: over the packet limit
        raw_connect("c1") + raw_publish("bad/+/topic", b"x"),  # wildcard in a topic name
        raw_connect("c2") + bytes([0x34]) + b"\x05\x00\x01a\x00\x01",  # QoS 2: not supported
        raw_connect("c3") + b"\x80\x04\x00\x01\x00\x00",  # SUBSCRIBE with wrong header flags
        raw_connect("c4") + raw_connect("c4"),  # a second CONNECT
        raw_connect("c5") + bytes([0x30, 0x03, 0x00, 0x05, 0x61]),  # topic longer than the packet
        raw_connect("c6") + bytes([0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]),  # topic is not UTF-8
    ],
)
def test_malformed_packets_drop_only_that_client(
    broker: EmbeddedBroker, publisher: paho.Client, garbage: bytes
) -> None:
    sub = Collector(broker.host, broker.port, ["alive"])
    bad = raw_socket(broker.host, broker.port, garbage)
    read_until_closed(bad)  # the broker hangs up on the bad client...
    assert broker.stats["malformed"] == 1
    send(publisher, "alive", b"yes")  # ...and keeps serving the others
    sub.wait_for("alive", b"yes")
    assert publisher.is_connected()


def test_oversized_publish_is_refused(broker: EmbeddedBroker, publisher: paho.Client) -> None:
    sub = Collector(broker.host, broker.port, ["big", "small"])
    big = raw_socket(broker.host, broker.port, raw_connect("big"), raw_publish("big", b"x" * (broker.max_packet + 1)))
    read_until_closed(big)
    send(publisher, "small", b"ok")
    sub.wait_for("small")
    assert sub.on("big") == []


def test_other_protocol_levels_are_rejected_with_return_code_1(broker: EmbeddedBroker) -> None:
    for level in (3, 5):
        sock = raw_socket(broker.host, broker.port, raw_connect("old", level=level))
        assert read_until_closed(sock) == b"\x20\x02\x00\x01"


def test_empty_client_id_without_clean_session_is_rejected(broker: EmbeddedBroker) -> None:
    packet = bytearray(raw_connect(""))
    packet[9] = 0x00  # connect flags: clean session off
    sock = raw_socket(broker.host, broker.port, bytes(packet))
    assert read_until_closed(sock) == b"\x20\x02\x00\x02"


def test_second_connection_with_the_same_client_id_takes_over(broker: EmbeddedBroker) -> None:
    first = raw_socket(broker.host, broker.port, raw_connect("same"))
    assert first.recv(4) == CONNACK_OK
    second = raw_socket(broker.host, broker.port, raw_connect("same"))
    assert second.recv(4) == CONNACK_OK
    assert read_until_closed(first) == b""
    second.sendall(b"\xc0\x00")  # PINGREQ
    assert second.recv(2) == b"\xd0\x00"  # PINGRESP


def test_async_api_in_a_running_loop() -> None:
    async def scenario() -> bytes:
        broker = EmbeddedBroker(port=0)
        await broker.start_async()
        try:
            reader, writer = await asyncio.open_connection(broker.host, broker.port)
            subscribe = b"\x82\x08\x00\x01\x00\x03a/b\x01"
            writer.write(raw_connect("async") + subscribe + raw_publish("a/b", b"hi", qos=1, packet_id=7))
            await writer.drain()
            received = await reader.readexactly(4 + 5 + 4 + 11)  # CONNACK, SUBACK, PUBACK, PUBLISH
            writer.close()
            return received
        finally:
            await broker.stop_async()

    data = asyncio.run(scenario())
    assert data[:4] == CONNACK_OK
    assert data[4:9] == b"\x90\x03\x00\x01\x01"  # SUBACK granted QoS 1
    assert b"\x40\x02\x00\x07" in data[9:]  # PUBACK for packet 7
    assert b"\x32\x09\x00\x03a/b\x00\x01hi" in data[9:]  # delivered at QoS 1 with packet id 1


def test_busy_port_is_a_config_error(broker: EmbeddedBroker) -> None:
    with pytest.raises(ConfigError, match="mqtt.port"):
        EmbeddedBroker(port=broker.port).start()


def test_service_runs_against_the_embedded_broker() -> None:
    """No broker configured: the bridge's discovery and lock work against the embedded one."""
    settings, broker = embedded_broker_for(MqttSettings(port=free_port()))
    assert broker is not None and settings.host == "127.0.0.1" and settings.port == broker.port

    class Relay:
        unlocked = 0

        def unlock(self) -> None:
            self.unlocked += 1

        def lock(self) -> None:
            pass

    relay = Relay()
    bridge = HomeAssistantBridge(settings, ["front"], LockSettings(relock_s=1, unlocking_s=0), lambda door: relay)
    watcher = Collector(settings.host, settings.port, ["homeassistant/lock/#", "facelock/#"])
    try:
        bridge.start()
        watcher.wait_for("facelock/availability", b"online")
        config = json.loads(watcher.wait_for("homeassistant/lock/facelock_front/lock/config")[0].payload)
        watcher.publish(config["command_topic"], "UNLOCK")
        watcher.wait_for(config["state_topic"], b"UNLOCKED")
        wait_until(lambda: watcher.payloads(config["state_topic"])[-1] == b"LOCKED", what="relock")
        states = watcher.payloads(config["state_topic"])
        assert states[states.index(b"UNLOCKING") :] == [b"UNLOCKING", b"UNLOCKED", b"LOCKED"]
        assert relay.unlocked == 1
    finally:
        watcher.close()
        bridge.stop()
        broker.stop()


def test_random_bytes_after_connect_never_take_the_broker_down(broker: EmbeddedBroker, publisher: paho.Client) -> None:
    rng = random.Random(1234)
    sub = Collector(broker.host, broker.port, ["alive"])
    for batch in range(2):  # each batch stays under the broker's client limit
        socks = []
        for i in range(80):
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
            socks.append(raw_socket(broker.host, broker.port, raw_connect(f"fuzz{batch}-{i}", keepalive=1) + noise))
        for sock in socks:
            assert read_until_closed(sock).startswith(CONNACK_OK)  # accepted, then dropped or timed out
    assert broker.stats["connections"] == 2 + 160
    endings = broker.stats["malformed"] + broker.stats["timeouts"] + broker.stats["disconnects"]
    assert endings == 160 and broker.stats["malformed"] > 0 and broker.stats["errors"] == 0
    send(publisher, "alive", b"still")
    sub.wait_for("alive", b"still")
