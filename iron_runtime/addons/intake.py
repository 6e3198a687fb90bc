"""The HTTP/1 intake: what the router accepts from a client's connection before mitmproxy
turns bytes into a request, and how every answer the proxy core writes itself looks.

mitmproxy's HTTP/1 server buffers a request head of any size, forwards header values that
hold a bare CR (which the next hop may read as a line break: header smuggling), NUL bytes
and folded lines, stops answering a chunked request that ends with trailers, closes the
connection without a word on malformed chunked framing, and writes a body in answer to
``HEAD``. The intake wraps three methods of its ``Http1Server`` so that:

* a request head larger than ``max_head_bytes`` or with more than ``max_headers`` fields
  is refused with 431, while it is still arriving;
* a malformed request line, a bare CR, NUL or other control byte in the head, and
  obsolete line folding are refused with 400 (RFC 9110 §5.5, RFC 9112 §5.2);
* a body is cut at ``body_limit`` while it is read (chunked bodies included) with 413;
* trailers of a chunked request are dropped (RFC 9110 §6.5.1), the request is served;
* malformed chunked framing is answered 400 before the connection closes;
* an answer to ``HEAD`` never carries a body;
* every error page written by the proxy core (these, and 502/504 when the provider cannot
  be reached) is JSON that both SDKs parse, with an ``x-iron-request-id`` header;
* a flow that an addon answered from its ``requestheaders`` hook (a wrong token, a declared
  body over the limit) gets that answer at once, without its body being read.

mitmproxy keeps the HTTP/1 layer process-wide, so the intake is one object per process:
``install()`` patches the layer once and the router addon configures ``INTAKE``.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from dataclasses import dataclass, field

import h11
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    RequestData,
    RequestProtocolError,
    ResponseData,
    ResponseProtocolError,
)

from iron_runtime import errors
from iron_runtime.headers import REQUEST_ID
from iron_runtime.settings import DEFAULT_BODY_LIMIT
from iron_runtime.wire import head_refusal, new_request_id

logger = logging.getLogger("iron_runtime")

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
HEAD_DEADLINE_S = 10.0


@dataclass
class Intake:
    """Limits of the intake, and what it knows of the flows in flight."""

    body_limit: int = DEFAULT_BODY_LIMIT
    max_head_bytes: int = MAX_HEAD_BYTES
    max_headers: int = MAX_HEADERS
    head_deadline_s: float = HEAD_DEADLINE_S
    refused: int = 0  # connections refused before a request existed
    # Request ids of live requests, for the pages the proxy core writes (502, 413, ...).
    request_ids: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    # Answers decided in ``requestheaders``, written instead of reading the body.
    early_answers: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    def check_head(self, data: bytes) -> tuple[int, str] | None:
        """Why the request head at the start of ``data`` is refused, or None."""
        return head_refusal(data, self.max_head_bytes, self.max_headers)

    def error_page(
        self, status: int, message: str, request: http.Request | None = None, head: bool = False
    ) -> bytes:
        """A complete HTTP/1 error answer, JSON in a shape both SDKs read."""
        rid = self.request_ids.get(request) if request is not None else None
        type_, code, text = errors.protocol_error(status, message)
        resp = http.Response.make(
            status,
            errors.universal_error_body(status, type_, text, code),
            {
                "content-type": "application/json",
                "connection": "close",
                REQUEST_ID: rid or new_request_id(),
            },
        )
        if head:
            resp.data.content = b""  # content-length stays: what a GET would have been sent
        return http1.assemble_response(resp)


INTAKE = Intake()


def assemble(response: http.Response, head: bool = False) -> bytes:
    """The wire form of a local answer written by the intake itself; the connection closes
    after it (the request's body is left unread)."""
    response = response.copy()
    response.headers["connection"] = "close"
    if head:
        response.data.content = b""
    return http1.assemble_response(response)


@dataclass(slots=True)
class _Conn:
    """What the intake tracks of one client connection."""

    closed: bool = False  # its last answer is written (or the client left mid-body)
    discarded: int = 0  # bytes dropped after the last answer
    blank: int = 0  # empty lines before request lines
    head_started: float | None = None  # time.monotonic() the current head began
    body_bytes: int = 0  # of the current request


_conns: weakref.WeakKeyDictionary[_http1.Http1Server, _Conn] = weakref.WeakKeyDictionary()


def _conn(server: _http1.Http1Server) -> _Conn:
    c = _conns.get(server)
    if c is None:
        c = _conns[server] = _Conn()
    return c


def _is_head(server: _http1.Http1Server) -> bool:
    return server.request is not None and server.request.data.method.upper() == b"HEAD"


def _refuse(server: _http1.Http1Server, status: int, message: str):
    """Answer an error and close: the connection's request cannot be read any further."""
    yield from _answer_and_close(
        server, INTAKE.error_page(status, message, server.request, _is_head(server)), linger=True
    )


def _answer_and_close(server: _http1.Http1Server, answer: bytes | None, linger: bool = False):
    """Write the connection's last answer (at most one) and close it.

    ``linger``: close only our side at once and read (discarding) what the client is still
    sending, up to ``2 * body_limit`` bytes, before closing for good; a client busy
    uploading a body then reads the answer instead of a connection reset. It is also the
    only safe way to close from outside the connection's own task: mitmproxy cancels that
    task to close, and a cancellation that lands while it is handing over received data
    skips closing the socket."""
    c = _conn(server)
    closed, c.closed = c.closed, True
    if answer is not None and not closed:
        yield commands.SendData(server.conn, answer)
    if linger:
        c.discarded = 0
        server.state = functools.partial(_discard, server)
        yield commands.CloseTcpConnection(server.conn, half_close=True)
    else:
        server.state = server.done
        yield commands.CloseConnection(server.conn)


def _discard(server: _http1.Http1Server, event: events.Event):
    """The state of an answered connection: drop what arrives, close once enough came."""
    if isinstance(event, events.DataReceived):
        c = _conn(server)
        c.discarded += len(server.buf)
        server.buf.maybe_extract_at_most(len(server.buf))
        if c.discarded > 2 * INTAKE.body_limit:
            server.state = server.done
            yield commands.CloseConnection(server.conn)


_original_read_headers = _http1.Http1Server.read_headers
_original_read_body = _http1.Http1Connection.read_body
_original_send = _http1.Http1Server.send
_original_make_body_reader = _http1.make_body_reader


def _read_headers(self: _http1.Http1Server, event: events.ConnectionEvent):
    c = _conn(self)
    if isinstance(event, events.DataReceived) and self.buf:
        data = bytes(self.buf)
        head = data.lstrip(b"\r\n")
        if len(head) < len(data):
            # Empty lines before a request line are ignored (RFC 9112 §2.2): all of them, at
            # once, but no more than a head's worth on one connection.
            self.buf.maybe_extract_at_most(len(data) - len(head))
            c.blank += len(data) - len(head)
            if c.blank > INTAKE.max_head_bytes:
                INTAKE.refused += 1
                yield from _refuse(self, 400, "too many empty lines before the request line")
                return
            if not head:
                return
        started = c.head_started
        now = time.monotonic()
        if started is None:
            c.head_started = now
        elif now - started > INTAKE.head_deadline_s:
            # a head trickling in byte by byte holds a connection (and a file descriptor)
            INTAKE.refused += 1
            limit = INTAKE.head_deadline_s
            yield from _refuse(self, 408, f"the request head took longer than {limit:g} s")
            return
        refusal = INTAKE.check_head(head)
        if refusal is not None:
            INTAKE.refused += 1
            logger.info("iron_runtime: refused a request head: %s", refusal[1])
            yield from _refuse(self, *refusal)
            return
    c.body_bytes = 0
    c.closed = False
    yield from _original_read_headers(self, event)
    if self.state != self.read_headers:
        c.head_started = None  # the head is complete: the next one has its own time


def _read_body(self: _http1.Http1Connection, event: events.Event):
    if not isinstance(self, _http1.Http1Server):
        yield from _original_read_body(self, event)
        return
    yield from _read_request_body(self, event)
    if (
        isinstance(event, events.DataReceived)
        and not _conn(self).closed
        and len(self.buf) > INTAKE.max_head_bytes
        and self.state == self.read_body
    ):
        # Bytes the body reader holds without consuming them: a chunk-size line, a chunk
        # extension or a trailer section that does not end. Data never piles up here.
        yield from _refuse(self, 400, "a chunk line or trailer section of the body is too long")
        yield ReceiveHttp(
            RequestProtocolError(
                self.stream_id, "chunk framing too long", ErrorCode.GENERIC_CLIENT_ERROR
            )
        )


def _read_request_body(self: _http1.Http1Server, event: events.Event):
    c = _conn(self)
    for command in _original_read_body(self, event):
        if isinstance(command, ReceiveHttp) and isinstance(command.event, RequestData):
            c.body_bytes += len(command.event.data)
            if c.body_bytes > INTAKE.body_limit:
                message = f"the body is over the router's limit of {INTAKE.body_limit} bytes"
                page = INTAKE.error_page(413, message, self.request, _is_head(self))
                yield from _answer_and_close(self, page, linger=True)
                yield ReceiveHttp(
                    RequestProtocolError(self.stream_id, message, ErrorCode.REQUEST_TOO_LARGE)
                )
                return
        elif isinstance(command, commands.CloseConnection):
            if isinstance(event, events.DataReceived):
                # h11 could not read the body (malformed chunked framing): say so.
                page = INTAKE.error_page(400, "malformed request body framing", self.request)
                yield from _answer_and_close(self, page, linger=True)
                continue
            c.closed = True  # the client left in the middle of its body
        yield command


def _send(self: _http1.Http1Server, event):
    if isinstance(event, ResponseData) and _is_head(self):
        return  # HEAD: headers only
    if isinstance(event, ResponseProtocolError):
        if not (self.conn.state & ConnectionState.CAN_WRITE):
            return
        answer = INTAKE.early_answers.pop(self.request, None) if self.request else None
        status = event.code.http_status_code()
        if answer is None and not self.response and status is not None:
            answer = INTAKE.error_page(status, event.message, self.request, _is_head(self))
        yield from _answer_and_close(self, answer, linger=True)
        return
    yield from _original_send(self, event)


class _TrailerDroppingReader:
    """A chunked body reader whose end of message carries no trailer fields."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def __call__(self, buf):
        return self._strip(self.reader(buf))

    def read_eof(self):
        return self._strip(self.reader.read_eof())

    @staticmethod
    def _strip(event):
        if isinstance(event, h11.EndOfMessage) and event.headers:
            return h11.EndOfMessage()
        return event


def _make_body_reader(expected_size: int | None):
    reader = _original_make_body_reader(expected_size)
    return _TrailerDroppingReader(reader) if expected_size is None else reader


def _make_error_response(status_code: int, message: str = "") -> bytes:
    return INTAKE.error_page(status_code, message)


def install() -> None:
    """Patch mitmproxy's HTTP/1 layer (once per process)."""
    if _http1.Http1Server.read_headers is _read_headers:
        return
    setattr(_http1.Http1Server, "read_headers", _read_headers)  # noqa: B010 - a patch
    setattr(_http1.Http1Server, "read_body", _read_body)  # noqa: B010
    setattr(_http1.Http1Server, "send", _send)  # noqa: B010
    _http1.make_body_reader = _make_body_reader
    _http1.make_error_response = _make_error_response
