"""Incremental parsing of server-sent events, with a bound on what is buffered.

Lines may end with LF, CRLF or a lone CR, mixed freely, as the SSE specification allows. A
CR that ends a chunk ends its line at once (an event it completes is returned without
waiting for the next chunk); if the next chunk starts with LF, that LF is the second half of
the same CRLF and is skipped. Field values are decoded as UTF-8 with replacement characters
for invalid bytes, as the specification says.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_EVENT_BYTES = 4 * 1024 * 1024


@dataclass(slots=True)
class Event:
    event: str | None
    data: str


class SSEError(ValueError):
    """An event grew past the parser's bound. ``events`` (from ``feed``) or ``blocks``
    (from ``blocks``) hold what the same call completed before it; ``SSEParser.drain()``
    gives the bytes still held."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.blocks: list[bytes] = []
        self.events: list[Event] = []


class SSEParser:
    """Feed it bytes as they arrive; it returns the complete events seen so far.

    Only the tail of an unfinished event is kept, and an event larger than
    ``max_event_bytes`` is an error, so memory stays bounded whatever the upstream sends.
    """

    __slots__ = ("_buf", "_max", "_skip_lf")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""  # the unfinished event, its line endings already LF
        self._max = max_event_bytes
        self._skip_lf = False  # the last chunk ended with a CR

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes (blocks that dispatch nothing are left out)."""
        try:
            blocks = self.blocks(data)
        except SSEError as e:
            e.events = [ev for b in e.blocks if (ev := parse_block(b)) is not None]
            raise
        return [ev for b in blocks if (ev := parse_block(b)) is not None]

    def blocks(self, data: bytes) -> list[bytes]:
        """The raw blocks of the events ``data`` completes: their lines joined by LF (CR
        and CRLF endings normalised), without the blank line that ends each. A block may
        dispatch no event (comments, ``id:`` or ``retry:`` lines only): ``parse_block``
        tells."""
        buf = self._append(data)
        blocks: list[bytes] = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            blocks.append(buf[start:end])
            start = end + 2
        try:
            self._keep(buf[start:] if start else buf)
        except SSEError as e:
            e.blocks = blocks
            raise
        return blocks

    def _append(self, data: bytes) -> bytes:
        """The held bytes followed by ``data``, its line endings made LF."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 10:  # b"\n": the second half of a CRLF split across chunks
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data[-1] == 13  # ends its line now; an LF may follow
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return self._buf + data

    def _keep(self, tail: bytes) -> None:
        """Hold the unfinished event; past the bound, raise (the bytes stay for ``drain``)."""
        self._buf = tail
        if len(tail) > self._max:
            raise SSEError(f"server-sent event larger than {self._max} bytes")

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete (line endings normalised to LF)."""
        return self._buf

    def drain(self) -> bytes:
        """Hand over the bytes of the unfinished event and start afresh: for a caller that
        passes the rest of the stream through unparsed. A CR that ended the last chunk is
        given back as CR, so an LF that follows still pairs with it."""
        held = self._buf
        if held and self._skip_lf:
            held = held[:-1] + b"\r"
        self._buf, self._skip_lf = b"", False
        return held


def parse_block(block: bytes) -> Event | None:
    """The event of one block of LF-separated lines, or None if it dispatches none."""
    name: str | None = None
    data: list[str] = []
    for raw in block.split(b"\n"):
        if not raw or raw[0] == 58:  # b":": a comment
            continue
        field_, _, value = raw.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field_ == b"data":
            data.append(value.decode("utf-8", "replace"))
        elif field_ == b"event":
            name = value.decode("utf-8", "replace")
    if not data and name is None:
        return None
    return Event(name, "\n".join(data))
