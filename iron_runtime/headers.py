"""Header policy between the agent, the router and the provider.

Upstream requests keep the client's headers (``anthropic-beta``, ``OpenAI-Organization``,
``OpenAI-Project``, ``Accept``, ``Content-Type``, ``User-Agent``, idempotency keys, the SDKs'
``x-stainless-*`` telemetry) except its credentials, hop-by-hop headers and the router's own
``x-iron-*`` headers; the real key is then set in the provider's form. Responses keep the
provider's headers (request ids, rate limits) minus hop-by-hop ones.

Headers are handled as the raw ``(name, value)`` byte pairs of the wire, in one pass: this
runs twice per request on the router's hot path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .providers import Provider

Fields = list[tuple[bytes, bytes]]

ANTHROPIC_VERSION = b"2023-06-01"
_VERSION_RE = re.compile(rb"\d{4}-\d{2}-\d{2}")

# Credentials of any kind the client may have sent: the IC token travels in these.
CLIENT_CREDENTIALS = frozenset(
    {b"authorization", b"x-api-key", b"api-key", b"proxy-authorization", b"cookie"}
)
# RFC 9110 §7.6.1 connection-specific headers. Content-Length and Transfer-Encoding are left
# to the proxy, which frames each side's message itself.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)
_DROP_UPSTREAM = CLIENT_CREDENTIALS | HOP_BY_HOP | {b"host", b"anthropic-version"}

REQUEST_ID = "x-iron-request-id"


def upstream_request_fields(
    fields: Iterable[tuple[bytes, bytes]], provider: Provider, key: str, host: str
) -> Fields:
    """The headers to send to ``provider`` at ``host``, from the client's headers."""
    out: Fields = [(b"host", host.encode())]
    version = b""
    for name, value in fields:
        lname = name.lower()
        if lname in _DROP_UPSTREAM or lname.startswith(b"x-iron-"):
            if lname == b"anthropic-version":
                version = value.strip()
            continue
        out.append((name, value))
    if provider is Provider.ANTHROPIC:
        out.append((b"x-api-key", key.encode()))
        out.append(
            (b"anthropic-version", version if _VERSION_RE.fullmatch(version) else ANTHROPIC_VERSION)
        )
    else:
        out.append((b"authorization", b"Bearer " + key.encode()))
    return out


def client_response_fields(fields: Iterable[tuple[bytes, bytes]], request_id: str) -> Fields:
    """The provider's response headers as returned to the client."""
    out = [(n, v) for n, v in fields if n.lower() not in HOP_BY_HOP]
    out.append((REQUEST_ID.encode(), request_id.encode()))
    return out
