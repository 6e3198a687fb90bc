"""Incremental parsing of server-sent events, with a bound on what is buffered."""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENT_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class Event:
    event: str | None
    data: str


class SSEError(ValueError):
    pass


class SSEParser:
    """Feed it bytes as they arrive; it returns the complete events seen so far.

    Only the tail of an unfinished event is kept, and an event larger than
    ``max_event_bytes`` is an error, so memory stays bounded whatever the upstream sends.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self._max = max_event_bytes

    def feed(self, data: bytes) -> list[Event]:
        buf = self._buf + data
        if b"\r\n" in buf:  # a CR at the end stays buffered until its LF arrives
            buf = buf.replace(b"\r\n", b"\n")
        events: list[Event] = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            event = _parse_block(buf[start:end])
            if event is not None:
                events.append(event)
            start = end + 2
        self._buf = buf[start:]
        if len(self._buf) > self._max:
            raise SSEError(f"server-sent event larger than {self._max} bytes")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._buf


def _parse_block(block: bytes) -> Event | None:
    name: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw.startswith(b":"):
            continue
        field, _, value = raw.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value.decode("utf-8"))
        elif field == b"event":
            name = value.decode("utf-8")
    if not data and name is None:
        return None
    return Event(name, "\n".join(data))
