"""FaceLock's MQTT connection (paho-mqtt v2): availability, reconnects, inbound dispatch.

- Availability by Last Will: `offline` (retained) is set as the will before connecting, `online`
  is published only after a successful CONNACK, `offline` again on a clean stop.
- paho reconnects with backoff (1 s doubling to 30 s). On every (re)connect the registered
  topics are subscribed again and `announce()` re-sends discovery and current states; so does
  Home Assistant's birth message (`<prefix>/status` = `online`), after a small random delay.
- Outbound QoS 1 messages are kept in paho's outbox while the broker is away and re-sent after
  the reconnect (paho keeps unacknowledged QoS 1 messages across reconnects).
- An exception in an inbound handler is logged and counted for that message only.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
from collections import Counter
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from ..errors import ConfigError
from ..settings import MqttSettings
from .topics import Topics

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
ANNOUNCE_DELAY_S = (0.5, 3.0)  # spread re-announcements of many devices after an HA restart
RECONNECT_DELAY_S = (1, 30)
MAX_OUTBOX = 10_000  # QoS 1 messages kept while the broker is away; beyond that new ones are refused

Handler = Callable[[paho.MQTTMessage], None]


class MqttConnection:
    """One connection to the broker, shared by every door."""

    def __init__(self, settings: MqttSettings, topics: Topics, announce: Callable[[], None] | None = None) -> None:
        if settings.host is None:
            raise ConfigError("mqtt.host: no broker host set (start the embedded broker or set mqtt.host)")
        self._host: str = settings.host
        self.stats: Counter[str] = Counter()
        self.connected = threading.Event()
        self._settings = settings
        self._topics = topics
        self._announce = announce
        self._handlers: dict[str, Handler] = {topics.ha_status: self._on_ha_status}
        self._timers: list[threading.Timer] = []
        self._stopping = False
        self._client = self._make_client(settings)

    def _make_client(self, settings: MqttSettings) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id, clean_session=True)
        client.will_set(self._topics.availability, OFFLINE, qos=1, retain=True)
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password is not None else None
            client.username_pw_set(settings.username, password)
        if settings.tls:
            _configure_tls(client, settings)
        client.reconnect_delay_set(*RECONNECT_DELAY_S)
        client.max_queued_messages_set(MAX_OUTBOX)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        s = self._settings
        log.info("connecting to MQTT broker %s:%d%s", s.host, s.port, " over TLS" if s.tls else "")
        self._client.connect_async(self._host, s.port, s.keepalive)
        self._client.loop_start()

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
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def publish(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> paho.MQTTMessageInfo:
        """Thread-safe. QoS 1 messages survive a broker outage; QoS 0 ones sent while away are lost."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.stats["outbox_full"] += 1
            log.error("MQTT outbox full (%d messages): dropped a message for %s", MAX_OUTBOX, topic)
        return info

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Route messages matching `topic_filter` to `handler`; kept across reconnects."""
        self._handlers[topic_filter] = handler
        if self.connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    # --- paho callbacks (run on paho's network thread) ------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: object, flags: paho.ConnectFlags, reason: ReasonCode, properties: object
    ) -> None:
        if reason.is_failure:
            self.stats["refused"] += 1
            log.error("MQTT broker %s:%d refused the connection: %s", self._settings.host, self._settings.port, reason)
            return  # not connected: no subscriptions, no `online`
        self.stats["connects"] += 1
        self.connected.set()  # before announcing, so that no state update falls between the two
        client.subscribe([(topic_filter, 1) for topic_filter in self._handlers])
        self._run_announce()
        client.publish(self._topics.availability, ONLINE, qos=1, retain=True)
        log.info("connected to MQTT broker %s:%d", self._settings.host, self._settings.port)

    def _on_disconnect(
        self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode, properties: object
    ) -> None:
        if self.connected.is_set() and not self._stopping:
            self.stats["disconnects"] += 1
            log.warning("lost the MQTT broker (%s); reconnecting", reason)
        self.connected.clear()

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        for topic_filter, handler in list(self._handlers.items()):
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
