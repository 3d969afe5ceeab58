"""FaceLock's MQTT connection (paho-mqtt v2): availability, reconnects, inbound dispatch.

- Availability by Last Will: `offline` (retained) is set as the will before connecting, `online`
  is published only after a successful CONNACK, `offline` again on a clean stop.
- paho reconnects with backoff (1 s doubling to 30 s). On every (re)connect the registered
  topics are subscribed again and `announce()` re-sends discovery and current states; so does
  Home Assistant's birth message (`<prefix>/status` = `online`), after a small random delay.
- A broker that cannot be reached is logged within seconds with its address and the reason (name
  resolution, refused connection, TLS, refused credentials): the first failure, a changed reason,
  then the 2nd, 4th, 8th... attempt, so a long outage does not flood the log.
- MQTT 5 first (message expiry on lock states), MQTT 3.1.1 when the broker refuses version 5 or
  never answers it (amqtt 0.12 ignores a version 5 CONNECT with a will), or when `mqtt.mqtt5` is off.
- Outbound QoS 1 messages are kept in paho's outbox while the broker is away and re-sent after
  the reconnect (paho keeps unacknowledged QoS 1 messages across reconnects).
- Camera snapshots arrive on a second connection of their own (`subscribe_frames`), subscribed
  at QoS 0: the broker queues messages per connection, so a snapshot flood that outruns FaceLock
  fills (and is dropped from) the snapshot connection's queue, never the one lock commands use.
- An exception in an inbound handler is logged and counted for that message only.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..errors import BrokerUnavailable, ConfigError
from ..settings import MqttSettings
from .topics import Topics

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
ANNOUNCE_DELAY_S = (0.5, 3.0)  # spread re-announcements of many devices after an HA restart
RECONNECT_DELAY_S = (1, 30)
MAX_OUTBOX = 10_000  # QoS 1 messages kept while the broker is away; beyond that new ones are refused
FRAMES_SUFFIX = "-frames"  # client id of the snapshot connection: <client_id>-frames

Handler = Callable[[paho.MQTTMessage], None]


class _Client(paho.Client):
    """paho's client, keeping why the last connection attempt failed: paho's network loop
    catches the OSError and only calls `on_connect_fail`, without it."""

    failure: str | None = None
    answered = False  # a CONNACK came since the last disconnect

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            self.failure = describe_failure(exc)
            raise


def describe_failure(exc: OSError) -> str:
    """A short, actionable reason for a failed connection attempt."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(exc, TimeoutError):
        return "no answer (connection timed out)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure ({exc.reason or exc})"
    return exc.strerror or str(exc) or type(exc).__name__


class MqttConnection:
    """One connection to the broker, shared by every door (plus one for camera snapshots)."""

    def __init__(self, settings: MqttSettings, topics: Topics, announce: Callable[[], None] | None = None) -> None:
        if settings.host is None:
            raise ConfigError("mqtt.host: no broker host set (start the embedded broker or set mqtt.host)")
        self._host: str = settings.host
        self.address = f"{settings.host}:{settings.port}"
        self.stats: Counter[str] = Counter()
        self.connected = threading.Event()
        self.last_failure: str | None = None
        self._failure_logged: str | None = None
        self._settings = settings
        self._topics = topics
        self._announce = announce
        self._handlers: dict[str, Handler] = {topics.ha_status: self._on_ha_status}
        self._frame_handlers: dict[str, Handler] = {}
        self._timers: list[threading.Timer] = []
        self._stopping = False
        self._started = False
        self._client = self._make_client(settings.client_id)
        self._frames: _Client | None = None

    def _make_client(self, client_id: str, will: bool = True) -> _Client:
        client = _Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if not self._settings.mqtt5:
            _downgrade(client)
        if will:
            client.will_set(self._topics.availability, OFFLINE, qos=1, retain=True)
        if self._settings.username is not None:
            password = self._settings.password.get_secret_value() if self._settings.password is not None else None
            client.username_pw_set(self._settings.username, password)
        if self._settings.tls:
            _configure_tls(client, self._settings)
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.max_queued_messages_set(MAX_OUTBOX)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    @property
    def mqtt5(self) -> bool:
        """Whether the broker speaks MQTT 5 (known once connected; 3.1.1 brokers get no expiry)."""
        return self._client.protocol == paho.MQTTv5

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        s = self._settings
        log.info("connecting to MQTT broker %s%s", self.address, " over TLS" if s.tls else "")
        self._started = True
        for client in (self._client, self._frames):
            if client is not None:
                self._connect(client)

    def _connect(self, client: _Client) -> None:
        client.connect_async(self._host, self._settings.port, self._settings.keepalive, clean_start=True)
        client.loop_start()

    def wait_connected(self, timeout: float) -> None:
        """Wait for the broker; BrokerUnavailable with its address and the last reason if it never answers."""
        if not self.connected.wait(timeout):
            reason = self.last_failure or "no answer"
            raise BrokerUnavailable(f"cannot reach MQTT broker {self.address}: {reason} (waited {timeout:.0f} s)")

    def stop(self) -> None:
        """Publish `offline`, wait briefly for it to be sent, disconnect."""
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        if self.connected.is_set():
            info = self._client.publish(self._topics.availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=3)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish %s before disconnecting: %s", OFFLINE, exc)
        for client in (self._client, self._frames):
            if client is not None:
                client.disconnect()
                client.loop_stop()
        self.connected.clear()

    def publish(
        self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False, expiry_s: float | None = None
    ) -> paho.MQTTMessageInfo:
        """Thread-safe. QoS 1 messages survive a broker outage; QoS 0 ones sent while away are lost.
        `expiry_s`: the broker drops the message (and a retained copy) after that long (MQTT 5 only)."""
        properties = None
        if expiry_s is not None and self.mqtt5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.stats["outbox_full"] += 1
            log.error("MQTT outbox full (%d messages): dropped a message for %s", MAX_OUTBOX, topic)
        return info

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Route messages matching `topic_filter` to `handler`; kept across reconnects."""
        self._handlers[topic_filter] = handler
        if self.connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def subscribe_frames(self, topic_filter: str, handler: Handler) -> None:
        """Like `subscribe`, for camera snapshots: on the snapshot connection, at QoS 0 (a lost
        frame is replaced by the next one; a queued one is stale). `handler` must be cheap."""
        self._frame_handlers[topic_filter] = handler
        if self._frames is None:
            self._frames = self._make_client(self._settings.client_id + FRAMES_SUFFIX, will=False)
            self._frames.on_message = self._on_frame_message
            if self._started and not self._stopping:
                self._connect(self._frames)
        elif self._frames.is_connected():
            self._frames.subscribe(topic_filter, qos=0)

    # --- paho callbacks (run on paho's network threads) -----------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: paho.ConnectFlags, reason: ReasonCode, properties: object
    ) -> None:
        client.answered = True
        if reason.is_failure:
            if client.protocol == paho.MQTTv5 and reason == "Unsupported protocol version":
                _downgrade(client)  # paho reconnects after its backoff, then in 3.1.1
                log.info("MQTT broker %s does not speak MQTT 5; using 3.1.1 (no message expiry)", self.address)
                return
            self.stats["refused"] += 1
            self._failed(client, f"the broker refused the connection: {reason}")
            return  # not connected: no subscriptions, no `online`
        self._recovered(client)
        if client is self._frames:
            self.stats["frame_connects"] += 1
            client.subscribe([(topic_filter, 0) for topic_filter in self._frame_handlers])
            return
        self.stats["connects"] += 1
        self.connected.set()  # before announcing, so that no state update falls between the two
        client.subscribe([(topic_filter, 1) for topic_filter in self._handlers])
        self._run_announce()
        client.publish(self._topics.availability, ONLINE, qos=1, retain=True)
        log.info("connected to MQTT broker %s (MQTT %s)", self.address, "5" if self.mqtt5 else "3.1.1")

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        self._failed(client, getattr(client, "failure", None) or "connection failed")

    def _on_disconnect(
        self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        answered, client.answered = client.answered, False
        if not answered and client.protocol == paho.MQTTv5 and reason == "Keep alive timeout":
            _downgrade(client)  # a CONNECT left unanswered for a keep-alive: a broker that ignores version 5
            self._failed(client, "no answer to an MQTT 5 connection; trying 3.1.1")
            return
        if client is not self._client:
            return
        if self.connected.is_set() and not self._stopping:
            self.stats["disconnects"] += 1
            log.warning("lost the MQTT broker %s (%s); reconnecting", self.address, reason)
        self.connected.clear()

    def _failed(self, client: paho.Client, reason: str) -> None:
        """Log a failed attempt: the first, a new reason, then attempts 2, 4, 8... (paho's backoff
        grows to 30 s, so a long outage logs ever more rarely); the rest at debug level."""
        key = "frame_failures" if client is self._frames else "failures"
        self.stats[key] += 1
        count = self.stats[key]
        if client is self._client:
            self.last_failure = reason
        what = "MQTT broker" if client is self._client else "MQTT broker (snapshot connection)"
        if reason != self._failure_logged or count & (count - 1) == 0:
            self._failure_logged = reason
            log.error(
                "cannot reach %s %s: %s (attempt %d; retrying, at most every %d s)",
                what, self.address, reason, count, RECONNECT_DELAY_S[1],
            )  # fmt: skip
        else:
            log.debug("cannot reach %s %s: %s (attempt %d)", what, self.address, reason, count)

    def _recovered(self, client: paho.Client) -> None:
        key = "frame_failures" if client is self._frames else "failures"
        if self.stats[key]:
            log.info("MQTT broker %s answered after %d failed attempts", self.address, self.stats[key])
            self.stats[key] = 0
            self._failure_logged = None

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        # The main connection subscribes only to its own topics; the snapshot handlers are looked
        # up too so that one entry point serves every topic (the fuzzer feeds this method).
        self._dispatch({**self._handlers, **self._frame_handlers}, message)

    def _on_frame_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self._dispatch(self._frame_handlers, message)

    def _dispatch(self, handlers: dict[str, Handler], message: paho.MQTTMessage) -> None:
        for topic_filter, handler in list(handlers.items()):
            if not paho.topic_matches_sub(topic_filter, message.topic):
                continue
            try:
                handler(message)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("error handling an MQTT message on %s", message.topic)

    def _on_ha_status(self, message: paho.MQTTMessage) -> None:
        if message.payload != ONLINE.encode():
            return  # `offline` (HA stopping) or anything else: nothing to do
        delay = random.uniform(*ANNOUNCE_DELAY_S)
        log.info("Home Assistant is online; re-announcing in %.1f s", delay)
        timer = threading.Timer(delay, self._run_announce)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _run_announce(self) -> None:
        if self._announce is None:
            return
        try:
            self._announce()
        except Exception:
            self.stats["announce_errors"] += 1
            log.exception("could not announce discovery and states")


def _downgrade(client: paho.Client) -> None:
    """Switch a client to MQTT 3.1.1 for its next attempt. paho has no public way to; it does the
    same itself to fall back from 3.1.1 to 3.1 (`_handle_connack`), and 3.1.1 also needs the
    clean-session flag that a version 5 client never set."""
    client._protocol = paho.MQTTv311
    client._clean_session = True


def _configure_tls(client: paho.Client, settings: MqttSettings) -> None:
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise ConfigError(f"mqtt.{name}: {path} is not a file")
    try:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,  # None: the system's CAs
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(f"mqtt.tls: cannot use the TLS certificate files: {exc}") from exc
