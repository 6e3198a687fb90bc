"""A small asyncio HTTP/1.1 server with keep-alive, SSE streaming and fault injection.

Hand-written on purpose: it must be several times faster than the router it stands behind
(so that benchmarks measure the router), start in milliseconds, and be able to misbehave
(drop connections, stall between chunks) in ways a polished framework will not.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

logger = logging.getLogger("iron_runtime.testing")

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}


@dataclass
class Fault:
    """One misbehaviour, applied to the next matching request.

    ``status``: answer this status with ``body`` (JSON) instead of the normal answer.
    ``drop``: close the connection without answering.
    ``drop_after_events``: stream this many SSE events, then close the connection.
    ``delay``: wait this long before answering.
    ``chunk_delay``: wait this long between SSE events.
    """

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    drop_after_events: int | None = None
    delay: float = 0.0
    chunk_delay: float | None = None


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes
    headers: dict[str, str] = field(default_factory=dict)
    events: Iterable[bytes] | None = None  # SSE events, already framed
    fault: Fault | None = None
    chunk_delay: float | None = None


class _Drop(Exception):
    pass


class Emulator:
    """Base class: subclasses implement ``handle(request) -> Reply``."""

    name = "emulator"

    def __init__(
        self, api_key: str, host: str = "127.0.0.1", port: int = 0, record: bool = True
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.record = record
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=10_000)
        self.faults: collections.deque[Fault] = collections.deque()
        self.chunk_delay = 0.0  # default pause between SSE events
        self.latency = 0.0  # seconds every answer waits (concurrent requests wait together)
        # JSON answers carry a lone UTF-16 surrogate as raw bytes (ED A0 80 for U+D800), as a
        # lenient server does, instead of the standard \ud800 escape.
        self.raw_surrogates = False
        self.in_flight = 0  # requests being answered now
        self.max_in_flight = 0  # the most requests ever answered at once (since reset)
        self.events_sent: list[float] = []  # loop time of each SSE event written (last stream)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Serve on a background thread; returns once the socket listens."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"{self.name}-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{self.name} emulator did not start")
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def serve_forever(self, ready: Callable[[], None] | None = None) -> None:
        """Serve on the current event loop (for a dedicated emulator process)."""
        await self._listen()
        if ready:
            ready()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    def go_down(self) -> None:
        """Stop answering, as a crashed service would: close the listening socket and drop
        every open connection (``come_up`` listens again on the same port)."""
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            if self._server:
                self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)

    def come_up(self) -> None:
        """Listen again, on the same port."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self.go_down()
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each applies to one upcoming API request, in order."""
        self.faults.extend(faults)

    def reset(self) -> None:
        self.requests.clear()
        self.faults.clear()
        self.chunk_delay = 0.0
        self.latency = 0.0
        self.raw_surrogates = False
        self.max_in_flight = self.in_flight

    # -- protocol ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = await self._read_chunked(reader)
                else:
                    body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                req = RecordedRequest(method, target, headers, body)
                if self.record:
                    self.requests.append(req)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    if self.latency:
                        await asyncio.sleep(self.latency)
                    try:
                        reply = self.handle(req)
                    except Exception as e:  # an emulator bug shows as a 500, never a drop
                        logger.exception("emulator: handling %s %s failed", method, target)
                        reply = Reply(500, {"error": {"message": f"emulator bug: {e!r}"}})
                    if "x-emulator-chunk-delay" in headers:  # per-request pacing (benchmarks)
                        reply.chunk_delay = float(headers["x-emulator-chunk-delay"])
                    await self._write(writer, reply)
                except _Drop:
                    return
                finally:
                    self.in_flight -= 1
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readline()

    def next_fault(self) -> Fault | None:
        return self.faults.popleft() if self.faults else None

    async def _write(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        fault = reply.fault
        if fault and fault.delay:
            await asyncio.sleep(fault.delay)
        if fault and fault.drop:
            writer.transport.abort()
            raise _Drop
        if fault and fault.status is not None:
            reply = Reply(fault.status, fault.body if fault.body is not None else {}, fault.headers)
        status_line = f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, 'Status')}\r\n"
        if reply.events is None:
            if isinstance(reply.body, bytes):
                body = reply.body
            elif self.raw_surrogates:
                body = json.dumps(reply.body, ensure_ascii=False).encode("utf-8", "surrogatepass")
            else:
                body = json.dumps(reply.body).encode()
            head = [
                status_line,
                "content-type: application/json\r\n",
                f"content-length: {len(body)}\r\n",
            ]
            head += [f"{k}: {v}\r\n" for k, v in reply.headers.items()]
            writer.write("".join(head).encode() + b"\r\n" + body)
            await writer.drain()
            return
        head = [
            status_line,
            "content-type: text/event-stream; charset=utf-8\r\n",
            "cache-control: no-cache\r\n",
            "transfer-encoding: chunked\r\n",
        ]
        head += [f"{k}: {v}\r\n" for k, v in reply.headers.items()]
        writer.write("".join(head).encode() + b"\r\n")
        await writer.drain()
        delay = self.chunk_delay if reply.chunk_delay is None else reply.chunk_delay
        if fault and fault.chunk_delay is not None:
            delay = fault.chunk_delay
        drop_after = fault.drop_after_events if fault else None
        loop = asyncio.get_running_loop()
        self.events_sent = sent = []
        for i, event in enumerate(reply.events):
            if drop_after is not None and i >= drop_after:
                writer.transport.abort()
                raise _Drop
            if delay and i:
                await asyncio.sleep(delay)
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            sent.append(loop.time())
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    def handle(self, request: RecordedRequest) -> Reply:  # pragma: no cover - abstract
        raise NotImplementedError


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event; ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {payload}\n\n".encode()
