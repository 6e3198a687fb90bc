"""What the router accepts as an HTTP/1 request head, as pure functions over bytes (the
addon ``iron_runtime.addons.intake`` applies them to mitmproxy's HTTP/1 server)."""

from __future__ import annotations

import itertools
import re
import secrets

_HEAD_END = re.compile(rb"\n\r?\n")
# RFC 9112 §3: method SP request-target SP HTTP-version, nothing else.
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e\x80-\xff]+ HTTP/\d\.\d\r?")
# Control bytes other than HTAB, and a CR that does not end a line.
_BAD_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
_FOLDED = re.compile(rb"\n[ \t]")

CONNECT_REFUSED = (
    "The router is an API endpoint, not a forward proxy: point the SDK's base_url at it "
    "instead of configuring it as an HTTP proxy."
)


def head_refusal(data: bytes, max_head_bytes: int, max_headers: int) -> tuple[int, str] | None:
    """Why the request head at the start of ``data`` is refused, or None (also while an
    acceptable head is still incomplete)."""
    end = _HEAD_END.search(data, 0, max_head_bytes + 3)
    if end is None:
        if len(data) > max_head_bytes:
            return 431, f"the request head is larger than {max_head_bytes} bytes"
        return None
    head = data[: end.start() + 1]
    if head.count(b"\n") - 1 > max_headers:
        return 431, f"the request has more than {max_headers} header fields"
    line_end = head.find(b"\n")
    if head.startswith(b"CONNECT "):
        return 405, CONNECT_REFUSED
    if not _REQUEST_LINE.fullmatch(head, 0, line_end):
        return 400, "malformed request line (expected 'METHOD /path HTTP/1.1')"
    bad = _BAD_BYTES.search(head)
    if bad is not None:
        what = "a bare CR" if bad.group() == b"\r" else f"the control byte {bad.group()!r}"
        return 400, f"the request head contains {what}, which HTTP does not allow"
    if _FOLDED.search(head, line_end):
        return 400, "obsolete line folding in a header field is not accepted"
    return None


_PROCESS_PREFIX = secrets.token_hex(6)
_request_counter = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across router processes: random per process, then a counter."""
    return f"req_{_PROCESS_PREFIX}{next(_request_counter):08x}"
