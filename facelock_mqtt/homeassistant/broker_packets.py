"""MQTT 3.1.1 wire format for the embedded broker: packet framing, fields, topic rules."""

from __future__ import annotations

import asyncio

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
ACCEPTED, BAD_PROTOCOL, BAD_CLIENT_ID, UNAVAILABLE = 0, 1, 2, 3
SUBACK_FAILURE = 0x80


class ProtocolError(Exception):
    """A client broke MQTT 3.1.1; it is disconnected."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 matching of a topic name against a filter with `+` and `#`."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(wanted):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(wanted) == len(levels)


def valid_filter(topic_filter: str) -> bool:
    levels = topic_filter.split("/")
    if not topic_filter or "\0" in topic_filter:
        return False
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def valid_topic(topic: str) -> bool:
    return bool(topic) and not any(c in topic for c in "+#\0")


class Body:
    """Reads the fields of one packet body; any shortfall is a protocol error."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("string is not UTF-8") from exc
        if "\0" in text:
            raise ProtocolError("string contains U+0000")
        return text

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def more(self) -> bool:
        return self.pos < len(self.data)


def encode_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes = b"") -> bytes:
    return bytes([first_byte]) + encode_length(len(body)) + body


def encode_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


async def read_packet(reader: asyncio.StreamReader, max_size: int, expect: int | None = None) -> tuple[int, int, bytes]:
    """Read one packet: (type, flags, body). A wrong type fails before its body is awaited."""
    first = (await reader.readexactly(1))[0]
    if first >> 4 in (0, 15) or (expect is not None and first >> 4 != expect):
        raise ProtocolError(f"unexpected packet type {first >> 4}")
    length, multiplier = 0, 1
    for _ in range(4):
        digit = (await reader.readexactly(1))[0]
        length += (digit & 0x7F) * multiplier
        if not digit & 0x80:
            break
        multiplier *= 128
    else:
        raise ProtocolError("remaining length longer than 4 bytes")
    if length > max_size:
        raise ProtocolError(f"packet of {length} bytes exceeds the limit of {max_size}")
    return first >> 4, first & 0x0F, await reader.readexactly(length)
