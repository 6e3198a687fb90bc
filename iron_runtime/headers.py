"""Header policy between the agent, the router and the provider.

Upstream requests keep the client's headers (``anthropic-beta``, ``OpenAI-Organization``,
``OpenAI-Project``, ``Accept``, ``Content-Type``, ``User-Agent``, idempotency keys, the SDKs'
``x-stainless-*`` telemetry) except its credentials, hop-by-hop headers and the router's own
``x-iron-*`` headers; the real key is then set in the provider's form. Responses keep the
provider's headers (request ids, rate limits) minus hop-by-hop ones.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping

from .providers import Provider

ANTHROPIC_VERSION = "2023-06-01"
_VERSION_RE = re.compile(r"\d{4}-\d{2}-\d{2}")

# Credentials of any kind the client may have sent: the IC token travels in these.
CLIENT_CREDENTIALS = ("authorization", "x-api-key", "api-key", "proxy-authorization", "cookie")

# RFC 9110 §7.6.1 connection-specific headers. Content-Length and Transfer-Encoding are left
# to mitmproxy, which frames each side's message itself.
HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade")

REQUEST_ID = "x-iron-request-id"


def prepare_upstream_request(
    headers: MutableMapping[str, str], provider: Provider, key: str
) -> None:
    """Rewrite the client's headers in place into the headers sent to ``provider``."""
    for name in CLIENT_CREDENTIALS + HOP_BY_HOP:
        headers.pop(name, None)
    for name in [n for n in headers if n.lower().startswith("x-iron-")]:
        headers.pop(name, None)
    if provider is Provider.ANTHROPIC:
        headers["x-api-key"] = key
        version = headers.get("anthropic-version", "").strip()
        headers["anthropic-version"] = (
            version if _VERSION_RE.fullmatch(version) else ANTHROPIC_VERSION
        )
    else:
        headers["authorization"] = f"Bearer {key}"


def mask_upstream_credentials(headers: MutableMapping[str, str], masked: str) -> None:
    """Replace the real key in a request that has been sent, so stored flows never hold it."""
    if "authorization" in headers:
        headers["authorization"] = f"Bearer {masked}"
    if "x-api-key" in headers:
        headers["x-api-key"] = masked


def prepare_client_response(headers: MutableMapping[str, str], request_id: str) -> None:
    for name in HOP_BY_HOP:
        headers.pop(name, None)
    headers[REQUEST_ID] = request_id
