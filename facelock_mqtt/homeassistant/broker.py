"""A small embedded MQTT 3.1.1 broker in pure asyncio, for when no broker is configured.

It serves FaceLock on a fresh machine: clean sessions only, QoS 0 and 1 (delivered at the lower
of the publish and subscription QoS), `+`/`#` wildcards, retained messages, Last Will on an
abnormal disconnect, keep-alive (1.5x) and a bound on packet size. It binds to localhost unless
told otherwise and has no authentication, so it is not meant to face a network. A client that
sends a malformed packet is disconnected; the broker and its other clients carry on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..settings import MqttSettings
from .broker_packets import (
    ACCEPTED,
    BAD_CLIENT_ID,
    BAD_PROTOCOL,
    CONNACK,
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBLISH,
    SUBACK,
    SUBACK_FAILURE,
    SUBSCRIBE,
    UNAVAILABLE,
    UNSUBACK,
    UNSUBSCRIBE,
    Body,
    ProtocolError,
    encode_string,
    packet,
    read_packet,
    topic_matches,
    valid_filter,
    valid_topic,
)

log = logging.getLogger(__name__)

MAX_PACKET = 2 * 1024 * 1024  # a JPEG snapshot fits; a runaway length field does not
CONNECT_TIMEOUT_S = 10.0
MAX_CLIENTS = 100
MAX_RETAINED = 10_000
MAX_QUEUED = 1_000  # outbound packets waiting for one slow client before it is dropped


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class _Client:
    client_id: str
    writer: asyncio.StreamWriter
    will: Message | None
    keepalive: int
    subs: dict[str, int] = field(default_factory=dict)
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED))
    last_id: int = 0

    def send(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            log.warning("embedded broker: client %r reads too slowly; disconnecting it", self.client_id)
            self.writer.transport.abort()

    def next_packet_id(self) -> int:
        self.last_id = self.last_id % 65535 + 1
        return self.last_id


class EmbeddedBroker:
    """An MQTT 3.1.1 broker; `start()`/`stop()` run it in a thread, `start_async()` in a loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, max_packet: int = MAX_PACKET) -> None:
        self.host, self.port, self.max_packet = host, port, max_packet
        self.stats: Counter[str] = Counter()
        self._clients: dict[str, _Client] = {}
        self._retained: dict[str, Message] = {}
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[object], asyncio.StreamWriter] = {}
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start_async(self) -> None:
        """Listen on host:port in the running loop; port 0 picks a free port (see `.port`)."""
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("embedded broker listens on %s: it has no authentication", self.host)
        try:
            self._server = await asyncio.start_server(self._serve_client, self.host, self.port)
        except OSError as exc:
            raise ConfigError(
                f"mqtt.port: cannot start the embedded MQTT broker on {self.host}:{self.port}: {exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)

    async def stop_async(self) -> None:
        """Stop listening and close every connection (no Last Will is sent for these)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections.values()):
            writer.transport.abort()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._closing = False

    def start(self) -> None:
        """Run the broker in its own thread and event loop; return once it listens."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:  # handed to the starting thread, which raises it
                failure.append(exc)
                ready.set()
                loop.close()
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name="mqtt-broker", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one connection ----------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        client: _Client | None = None
        sender: asyncio.Task[None] | None = None
        clean = False
        try:
            client = await self._connect(reader, writer)
            if client is not None:
                sender = asyncio.create_task(self._send_loop(client))
                clean = await self._session(client, reader)
        except ProtocolError as exc:
            self.stats["malformed"] += 1
            log.warning("embedded broker: dropping client %s: %s", client.client_id if client else "?", exc)
        except TimeoutError:
            self.stats["timeouts"] += 1
            log.info("embedded broker: client %s timed out", client.client_id if client else "?")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.stats["lost"] += 1  # the peer went away without DISCONNECT; its will goes out below
        except Exception:  # a broker bug must cost one connection, never the broker
            self.stats["errors"] += 1
            log.exception("embedded broker: error serving client %s", client.client_id if client else "?")
        finally:
            if client is not None:
                self._drop(client, publish_will=not clean)
            if sender is not None:
                await self._finish_sending(client, sender)
            writer.close()
            self._connections.pop(task, None)  # type: ignore[arg-type]

    async def _finish_sending(self, client: _Client | None, sender: asyncio.Task[None]) -> None:
        if client is not None:
            try:
                client.queue.put_nowait(None)
            except asyncio.QueueFull:
                sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    @staticmethod
    async def _send_loop(client: _Client) -> None:
        while (data := await client.queue.get()) is not None:
            client.writer.write(data)
            await client.writer.drain()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Client | None:
        read = read_packet(reader, self.max_packet, expect=CONNECT)
        _, flags, data = await asyncio.wait_for(read, CONNECT_TIMEOUT_S)
        if flags:
            raise ProtocolError("invalid CONNECT header flags")
        body = Body(data)
        protocol, level, cflags, keepalive = body.string(), body.u8(), body.u8(), body.u16()
        if protocol not in ("MQTT", "MQIsdp"):
            raise ProtocolError(f"unknown protocol name {protocol!r}")
        if (protocol, level) != ("MQTT", 4):
            writer.write(packet(CONNACK << 4, bytes([0, BAD_PROTOCOL])))
            self.stats["rejected_protocol"] += 1
            return None
        client_id, will = self._parse_connect_payload(body, cflags)
        code = ACCEPTED
        if not client_id and not cflags & 0x02:
            code = BAD_CLIENT_ID  # a persistent session needs a client id
        elif client_id not in self._clients and len(self._clients) >= MAX_CLIENTS:
            code = UNAVAILABLE
        if code != ACCEPTED:
            writer.write(packet(CONNACK << 4, bytes([0, code])))
            return None
        client = _Client(client_id or f"auto-{uuid.uuid4().hex}", writer, will, keepalive)
        if (old := self._clients.get(client.client_id)) is not None:
            old.writer.transport.abort()  # MQTT 3.1.4: a second connection takes over the id
        self._clients[client.client_id] = client
        self.stats["connections"] += 1
        client.send(packet(CONNACK << 4, bytes([0, ACCEPTED])))  # never a session present
        return client

    @staticmethod
    def _parse_connect_payload(body: Body, cflags: int) -> tuple[str, Message | None]:
        has_will, will_qos, will_retain = bool(cflags & 0x04), (cflags >> 3) & 0x03, bool(cflags & 0x20)
        if cflags & 0x01 or will_qos == 3 or (not has_will and (will_qos or will_retain)):
            raise ProtocolError("invalid CONNECT flags")
        if cflags & 0x40 and not cflags & 0x80:
            raise ProtocolError("password without user name")
        client_id = body.string()
        will = None
        if has_will:
            topic, payload = body.string(), body.binary()
            if not valid_topic(topic):
                raise ProtocolError(f"invalid will topic {topic!r}")
            will = Message(topic, payload, min(will_qos, 1), will_retain)
        if cflags & 0x80:
            body.string()  # user name: the embedded broker does not authenticate
        if cflags & 0x40:
            body.binary()
        if body.more():
            raise ProtocolError("trailing bytes in CONNECT")
        return client_id, will

    async def _session(self, client: _Client, reader: asyncio.StreamReader) -> bool:
        """Serve packets until DISCONNECT (True) or an error/timeout (raised)."""
        timeout = 1.5 * client.keepalive if client.keepalive else None
        while True:
            kind, flags, data = await asyncio.wait_for(read_packet(reader, self.max_packet), timeout)
            if kind == DISCONNECT:
                self.stats["disconnects"] += 1
                return True
            self._dispatch(client, kind, flags, Body(data))

    def _dispatch(self, client: _Client, kind: int, flags: int, body: Body) -> None:
        if kind == PUBLISH:
            self._on_publish(client, flags, body)
        elif kind == PUBACK and not flags:
            body.u16()  # QoS 1 towards clients is fire-and-forget within a clean session
        elif kind == SUBSCRIBE and flags == 0x02:
            self._on_subscribe(client, body)
        elif kind == UNSUBSCRIBE and flags == 0x02:
            self._on_unsubscribe(client, body)
        elif kind == PINGREQ and not flags:
            client.send(packet(PINGRESP << 4))
        else:
            raise ProtocolError(f"unexpected packet type {kind} flags {flags:#x}")
        if body.more():
            raise ProtocolError(f"trailing bytes in packet type {kind}")

    def _on_publish(self, client: _Client, flags: int, body: Body) -> None:
        qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
        if qos > 1:
            raise ProtocolError("QoS 2 is not supported by the embedded broker")
        topic = body.string()
        if not valid_topic(topic):
            raise ProtocolError(f"invalid topic name {topic!r}")
        packet_id = body.u16() if qos else 0
        self.route(Message(topic, body.rest(), qos, retain))
        if qos:
            client.send(packet(PUBACK << 4, packet_id.to_bytes(2, "big")))

    def _on_subscribe(self, client: _Client, body: Body) -> None:
        packet_id, granted, new = body.u16(), bytearray(), []
        while body.more():
            topic_filter, qos = body.string(), body.u8()
            if qos > 2:
                raise ProtocolError("reserved bits set in a requested QoS")
            if valid_filter(topic_filter):
                client.subs[topic_filter] = min(qos, 1)
                granted.append(min(qos, 1))
                new.append(topic_filter)
            else:
                granted.append(SUBACK_FAILURE)
        if not granted:
            raise ProtocolError("SUBSCRIBE without a topic filter")
        client.send(packet(SUBACK << 4, packet_id.to_bytes(2, "big") + bytes(granted)))
        for message in list(self._retained.values()):
            qos = max((client.subs[f] for f in new if topic_matches(f, message.topic)), default=-1)
            if qos >= 0:
                self._deliver(client, message, min(qos, message.qos), retain=True)

    def _on_unsubscribe(self, client: _Client, body: Body) -> None:
        packet_id = body.u16()
        if not body.more():
            raise ProtocolError("UNSUBSCRIBE without a topic filter")
        while body.more():
            client.subs.pop(body.string(), None)
        client.send(packet(UNSUBACK << 4, packet_id.to_bytes(2, "big")))

    # --- routing -------------------------------------------------------------------------------

    def route(self, message: Message) -> None:
        """Keep a retained message (empty payload deletes it) and deliver to every subscriber."""
        if message.retain:
            if not message.payload:
                self._retained.pop(message.topic, None)
            elif message.topic in self._retained or len(self._retained) < MAX_RETAINED:
                self._retained[message.topic] = message
            else:
                log.warning("embedded broker: retained store full; not keeping %s", message.topic)
        for client in list(self._clients.values()):
            qos = max((q for f, q in client.subs.items() if topic_matches(f, message.topic)), default=-1)
            if qos >= 0:
                self._deliver(client, message, min(qos, message.qos), retain=False)

    @staticmethod
    def _deliver(client: _Client, message: Message, qos: int, retain: bool) -> None:
        header = PUBLISH << 4 | qos << 1 | int(retain)
        packet_id = client.next_packet_id().to_bytes(2, "big") if qos else b""
        client.send(packet(header, encode_string(message.topic) + packet_id + message.payload))

    def _drop(self, client: _Client, publish_will: bool) -> None:
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        if publish_will and client.will is not None and not self._closing:
            self.route(client.will)


def embedded_broker_for(settings: MqttSettings) -> tuple[MqttSettings, EmbeddedBroker | None]:
    """When `mqtt.host` is empty, start an embedded broker on localhost and point settings at it.

    The configured port is tried first; when it is taken (often by a broker already running on
    the machine), a free port is used and logged, so the service still starts.
    """
    if settings.host is not None:
        return settings, None
    broker = EmbeddedBroker("127.0.0.1", settings.port)
    try:
        broker.start()
    except ConfigError as exc:
        log.warning("%s; the embedded broker takes a free port instead", exc)
        broker = EmbeddedBroker("127.0.0.1", 0)
        broker.start()
    log.info("no MQTT broker configured: embedded broker on 127.0.0.1:%d", broker.port)
    return settings.model_copy(update={"host": "127.0.0.1", "port": broker.port, "tls": False}), broker
