"""Which provider a request goes to, on which path, and in which API shape errors are told.

Rules, in order:

* a first path segment ``openai`` or ``anthropic`` picks the provider and is removed
  (whole segment only: ``/anthropicfoo`` is not a prefix);
* otherwise the JSON body's ``model``: a name starting with ``claude`` goes to Anthropic,
  anything else to OpenAI;
* ``POST .../chat/completions`` that lands on Anthropic goes through the gateway, which
  translates it to ``/v1/messages``; everything else is forwarded as it is.

A doubled ``/v1/v1/`` (an Anthropic SDK given ``router.base_url``, which already ends in
``/v1``) is read as one ``/v1/``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import ApiShape
from .providers import Provider

_PREFIXES = {"openai": Provider.OPENAI, "anthropic": Provider.ANTHROPIC}


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    path: str  # path (with query) to send upstream, before any gateway rewrite
    gateway: bool  # OpenAI chat.completions for a Claude model: needs translation
    shape: ApiShape  # the API the client speaks, for local error answers
    by: str  # "prefix", "model" or "default": why this provider was chosen


def split_provider_prefix(path: str) -> tuple[Provider | None, str]:
    """``/anthropic/v1/messages`` → (anthropic, ``/v1/messages``); other paths unchanged."""
    bare, sep, query = path.partition("?")
    segment, slash, rest = bare.lstrip("/").partition("/")
    provider = _PREFIXES.get(segment)
    if provider is None:
        return None, path
    remainder = "/" + rest if slash else "/"
    return provider, remainder + (sep + query if sep else "")


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Encoded separators: an upstream that decodes them would see another path than the router.
_REFUSED_ENCODED = frozenset({"2F", "5C", "00", "3F", "23"})


def _decode_unreserved(match: re.Match[str]) -> str:
    hex_ = match.group(1).upper()
    char = chr(int(hex_, 16))
    if char in _UNRESERVED:
        return char
    if hex_ in _REFUSED_ENCODED:
        raise ValueError(f"the path holds an encoded {'/' if hex_ == '2F' else '%' + hex_}")
    return "%" + hex_


def normalize_target(target: str) -> str:
    """The request target in the one form the router decides on and sends upstream.

    The fragment is removed (it is never part of an HTTP request; upstreams drop it),
    percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2), repeated slashes
    are merged and ``.``/``..`` segments resolved (§5.2.4). Encoded ``/``, ``\\``, ``?``, ``#``
    and NUL and a literal backslash are refused with ``ValueError``: another server could
    read them as separators. The query string is kept as it is.
    """
    target = target.partition("#")[0]
    path, sep, query = target.partition("?")
    if "\\" in path:
        raise ValueError("the path holds a backslash")
    if "%" in path:
        path = _PERCENT.sub(_decode_unreserved, path)
    if "//" in path or "/." in path:
        segments: list[str] = []
        parts = path.split("/")
        for i, segment in enumerate(parts[1:], 1):
            last = i == len(parts) - 1
            if segment == "..":
                if segments:
                    segments.pop()
                if last:
                    segments.append("")
            elif segment == ".":
                if last:
                    segments.append("")
            elif segment or last:
                segments.append(segment)
        path = "/" + "/".join(segments)
    if not path.startswith("/"):
        path = "/" + path
    return path + sep + query


def normalize_path(path: str) -> str:
    if path.startswith("/v1/v1/") or path == "/v1/v1":
        return path[3:]
    return path


def is_chat_completions(path: str) -> bool:
    return path.partition("?")[0].rstrip("/").endswith("/chat/completions")


def is_messages(path: str) -> bool:
    return path.partition("?")[0].rstrip("/").endswith("/v1/messages")


# OpenAI APIs that Anthropic has no counterpart for: first path segment after /v1, and what
# the API is called (for the error that tells a user what to use instead).
OPENAI_ONLY_APIS = {
    "responses": "the Responses API",
    "embeddings": "embeddings",
    "images": "image generation",
    "audio": "audio",
    "completions": "legacy completions",
    "moderations": "moderations",
    "fine_tuning": "fine-tuning",
    "assistants": "the Assistants API",
    "threads": "the Assistants API",
    "vector_stores": "vector stores",
    "realtime": "the Realtime API",
    "videos": "video generation",
}


def openai_only_api(path: str) -> str | None:
    """The name of the OpenAI-only API ``path`` belongs to (``/v1/responses`` → "the
    Responses API"), or None."""
    segments = path.partition("?")[0].strip("/").split("/")
    if len(segments) >= 2 and segments[0] == "v1":
        return OPENAI_ONLY_APIS.get(segments[1])
    return None


def client_shape(path: str, headers: Mapping[str, str]) -> ApiShape:
    """The API the client speaks: Anthropic for its paths or its SDK's headers."""
    provider, rest = split_provider_prefix(normalize_path(path))
    if provider is Provider.ANTHROPIC and not is_chat_completions(rest):
        return ApiShape.ANTHROPIC
    if provider is None and (is_messages(rest) or "anthropic-version" in headers):
        return ApiShape.ANTHROPIC
    return ApiShape.OPENAI


def route(method: str, path: str, headers: Mapping[str, str], model: str | None) -> Route:
    prefix_provider, rest = split_provider_prefix(normalize_path(path))
    rest = normalize_path(rest)
    if prefix_provider is not None:
        provider, by = prefix_provider, "prefix"
    elif model is not None:
        by = "model"
        provider = Provider.ANTHROPIC if model.startswith("claude") else Provider.OPENAI
    elif "anthropic-version" in headers or is_messages(rest):
        provider, by = Provider.ANTHROPIC, "client"  # the Anthropic SDK, naming no model
    else:
        provider, by = Provider.OPENAI, "default"
    gateway = (
        provider is Provider.ANTHROPIC and method.upper() == "POST" and is_chat_completions(rest)
    )
    shape = ApiShape.OPENAI if gateway else client_shape(path, headers)
    return Route(provider=provider, path=rest, gateway=gateway, shape=shape, by=by)


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token the client presents, from ``Authorization: Bearer`` or ``x-api-key``."""
    auth = headers.get("authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key")


def token_matches(headers: Mapping[str, str], token: str) -> bool:
    """Constant-time check of the client's token against the router's."""
    expected = token.encode()
    ok = False
    auth = headers.get("authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        ok |= hmac.compare_digest(_wire_bytes(auth[7:].strip()), expected)
    api_key = headers.get("x-api-key")
    if api_key is not None:
        ok |= hmac.compare_digest(_wire_bytes(api_key.strip()), expected)
    return ok


def _wire_bytes(value: str) -> bytes:
    """A header value back as the bytes it came in as (bytes that were not UTF-8 arrive as
    surrogate escapes)."""
    return value.encode("utf-8", "surrogateescape")
