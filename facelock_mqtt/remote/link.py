"""One MQTT 5 connection for remote verification (the door's client, or a worker).

MQTT 5 only: shared subscriptions, response topics, correlation data and message expiry are
what the split is built on, so a broker that refuses version 5 is an error at start, never a
silent downgrade. TLS and credentials come from the `mqtt` section like FaceLock's other
connection (each worker runs with its own `mqtt.username`/`mqtt.password`/`mqtt.client_id`).
Subscriptions are renewed on every reconnect.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..errors import BrokerUnavailable, ConfigError
from ..homeassistant.mqtt import RECONNECT_DELAY_S, _configure_tls
from ..settings import MqttSettings

log = logging.getLogger(__name__)

Handler = Callable[[paho.MQTTMessage], None]


class Link:
    def __init__(
        self, settings: MqttSettings, client_id: str, subscriptions: dict[str, Handler],
        receive_maximum: int | None = None, on_connected: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        if settings.host is None:
            raise ConfigError("mqtt.host: remote verification needs a broker (set mqtt.host)")
        self.settings = settings
        self.address = f"{settings.host}:{settings.port}"
        self.subscriptions = subscriptions  # topic filter -> handler; the first matching filter wins
        self.connected = threading.Event()
        self.failure: str | None = None
        self._on_connected = on_connected  # after every (re)connect, once subscribed
        self._started = False
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if settings.username is not None:
            password = settings.password.get_secret_value() if settings.password is not None else None
            self._client.username_pw_set(settings.username, password)
        if settings.tls:
            _configure_tls(self._client, settings)
        self._client.reconnect_delay_set(*RECONNECT_DELAY_S)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._connect_properties = None
        if receive_maximum is not None:  # a worker takes one request at a time: the broker sends the next elsewhere
            self._connect_properties = Properties(PacketTypes.CONNECT)
            self._connect_properties.ReceiveMaximum = receive_maximum

    def start(self, timeout: float = 10.0, required: bool = True) -> None:
        """Connect; when the broker does not answer in `timeout`, raise BrokerUnavailable, or
        (not `required`) log it and keep trying in the background."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(
            self.settings.host, self.settings.port, self.settings.keepalive, clean_start=True,
            properties=self._connect_properties,
        )  # fmt: skip
        self._client.loop_start()
        if not self.connected.wait(timeout):
            why = f"remote verification: cannot reach MQTT 5 broker {self.address}: {self.failure or 'no answer'}"
            if required:
                self.stop()
                self._started = False
                raise BrokerUnavailable(why)
            log.error("%s; doors deny until it answers (still trying)", why)

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, expiry_s: float | None = None,
        response_topic: str | None = None, correlation: str | None = None,
    ) -> paho.MQTTMessageInfo:  # fmt: skip
        properties = Properties(PacketTypes.PUBLISH)
        if expiry_s is not None:
            properties.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        if response_topic is not None:
            properties.ResponseTopic = response_topic
        if correlation is not None:
            properties.CorrelationData = correlation.encode()
        return self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.failure = f"connection refused ({reason})"
            log.error("remote verification: broker %s refused the connection: %s", self.address, reason)
            return
        self.failure = None
        for topic_filter in self.subscriptions:
            client.subscribe(topic_filter, qos=1)
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected.clear()
        if reason.is_failure:
            log.warning("remote verification: disconnected from %s (%s); reconnecting", self.address, reason)

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        for topic_filter, handler in self.subscriptions.items():
            if paho.topic_matches_sub(_plain(topic_filter), message.topic):
                try:
                    handler(message)
                except Exception:  # one bad message must not stop the connection's thread
                    log.exception("remote verification: error handling a message on %s", message.topic)
                return


def _plain(topic_filter: str) -> str:
    """`$share/<group>/<filter>` -> `<filter>`: messages arrive on the plain topic."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def correlation_of(message: paho.MQTTMessage) -> str | None:
    data = getattr(message.properties, "CorrelationData", None) if message.properties else None
    try:
        return None if data is None else bytes(data).decode()
    except UnicodeDecodeError:
        return None


def response_topic_of(message: paho.MQTTMessage) -> str | None:
    return getattr(message.properties, "ResponseTopic", None) if message.properties else None
