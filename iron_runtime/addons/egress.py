"""The egress: the real provider key goes on the wire, and nowhere else.

A routed flow carries a placeholder credential (``Authorization: Bearer sk-…wxyz``, the
key's masked form), so the flow object never holds the real key: not while the request
waits for the provider's answer, not when it is intercepted, saved (``-w``), duplicated or
shown in mitmweb. The egress wraps mitmproxy's HTTP/1 client and, as the request head is
written to the upstream connection, replaces a placeholder in the ``Authorization`` or
``x-api-key`` line with the key it stands for. Only those two lines are rewritten, and only
when their whole value is a placeholder the router itself issued.

Upstream connections of the router are HTTP/1.1 (the router's clients speak plain HTTP/1,
and mitmproxy then offers no ALPN upstream); a request sent any other way would carry the
placeholder and be refused by the provider: the key is never exposed to make it work.

One egress per process, like mitmproxy's HTTP layer: ``install()`` patches it once.
"""

from __future__ import annotations

from mitmproxy.proxy import commands
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import RequestHeaders

from iron_runtime.keys import KeyPlaceholders

EGRESS = KeyPlaceholders()

_original_send = _http1.Http1Client.send


def _send(self: _http1.Http1Client, event):
    if not isinstance(event, RequestHeaders):
        yield from _original_send(self, event)
        return
    head_written = False
    for command in _original_send(self, event):
        if isinstance(command, commands.SendData) and not head_written:
            head_written = True
            command = commands.SendData(command.connection, EGRESS.on_the_wire(command.data))
        yield command


def install() -> None:
    """Patch mitmproxy's HTTP/1 client (once per process)."""
    if _http1.Http1Client.send is not _send:
        setattr(_http1.Http1Client, "send", _send)  # noqa: B010 - a patch
