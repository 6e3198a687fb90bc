"""Usage and cost: what a request may cost at worst, and what it did cost."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .budget import usd
from .pricing import ModelPrice
from .tokens import count_text, encoding_for

# -- usage -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    """Tokens of one request, each counted once: ``input`` excludes cache reads and writes."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @property
    def prompt(self) -> int:
        return self.input + self.cache_read + self.cache_write

    def as_dict(self) -> dict[str, int]:
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
        }


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from(payload: Any) -> Usage | None:
    """Usage from an OpenAI or Anthropic answer (JSON body, stream event, or ``usage`` itself).

    OpenAI's ``prompt_tokens``/``input_tokens`` include cached tokens (``cached_tokens``);
    Anthropic's ``input_tokens`` exclude cache reads and writes, reported on their own.
    """
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        inner = payload.get("message") or payload.get("response")
        usage = inner.get("usage") if isinstance(inner, dict) else None
        if not isinstance(usage, dict):
            if {"prompt_tokens", "input_tokens", "output_tokens"} & set(payload):
                usage = payload
            else:
                return None
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        return Usage(
            _n(usage.get("input_tokens")),
            _n(usage.get("output_tokens")),
            _n(usage.get("cache_read_input_tokens")),
            _n(usage.get("cache_creation_input_tokens")),
        )
    prompt = _n(usage.get("prompt_tokens")) or _n(usage.get("input_tokens"))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = min(_n(details.get("cached_tokens")) if isinstance(details, dict) else 0, prompt)
    output = _n(usage.get("completion_tokens")) or _n(usage.get("output_tokens"))
    return Usage(prompt - cached, output, cached, 0)


# -- cost ------------------------------------------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost_micros(price: ModelPrice, usage: Usage) -> int:
    """Actual cost in micro-dollars, rounded up. Cache reads and writes at their own rates
    (the input rate when the table has none)."""
    assert price.input is not None and price.output is not None
    total = (
        usage.input * price.input
        + usage.output * price.output
        + usage.cache_read * (price.cache_read if price.cache_read is not None else price.input)
        + usage.cache_write * (price.cache_write if price.cache_write is not None else price.input)
    )
    return _ceil_div(total, 1_000_000)


def worst_case_micros(price: ModelPrice, input_tokens: int, max_output: int) -> int:
    """The most a request can cost: every input token at the dearest input rate (a cache
    write costs more than a plain input token), every allowed output token."""
    assert price.input is not None and price.output is not None
    rate_in = max(price.input, price.cache_write or 0)
    return _ceil_div(input_tokens * rate_in + max_output * price.output, 1_000_000)


def requested_max_output(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


# Endpoints that cost nothing: never reserved, never refused. Matched on the whole route
# path (normalised by the router, the same path that goes upstream), never on a suffix.
FREE_ENDPOINT = re.compile(
    r"/v1/(?:messages/count_tokens|moderations"
    r"|files(?:/[A-Za-z0-9_.:-]+(?:/content)?)?"
    r"|uploads(?:/[A-Za-z0-9_.:-]+(?:/(?:parts|complete|cancel))?)?)/?"
)


# Work the router cannot meter, whatever model it names: batches run later, the Realtime API
# is a WebSocket, fine-tuning is billed by training tokens. Refused while a budget is set.
UNMETERED = re.compile(r"/v1/(?:batches|messages/batches|realtime|fine_tuning)(?:/.*)?")


def is_free(path: str) -> bool:
    """An endpoint that costs nothing (``path`` without its query)."""
    return FREE_ENDPOINT.fullmatch(path) is not None


def is_unmetered(method: str, path: str) -> bool:
    """Work the router cannot meter (reading a batch's status is free; opening the Realtime
    API is a GET)."""
    if UNMETERED.fullmatch(path) is None:
        return False
    return method != "GET" or path.startswith("/v1/realtime")


def is_embeddings(path: str) -> bool:
    """``/v1/embeddings`` (the routed path, query aside): billed for its input only."""
    return path.partition("?")[0].rstrip("/") == "/v1/embeddings"


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embedding_input_tokens(
    body: dict[str, Any], model: str, count_text: Callable[[str, str], int] = count_text
) -> int:
    """The input tokens an embeddings request is billed for (its ``usage.prompt_tokens``),
    never fewer: a string, or each string of a list, counted with the model's encoding
    (what OpenAI counts); token ids (a list of integers, or a list of such lists) one each,
    as given. Anything else counts as its JSON text, which is more than it can be billed.
    ``count_text`` may be an estimate (for a figure only recorded)."""
    name = encoding_for(model)
    value = body.get("input")
    if isinstance(value, str):
        return count_text(value, name)
    if not isinstance(value, list):
        return count_text(json.dumps(value), name)
    total = 0
    for item in value:
        if isinstance(item, str):
            total += count_text(item, name)
        elif _is_token_id(item):
            total += 1
        elif isinstance(item, list):
            total += sum(1 if _is_token_id(t) else count_text(json.dumps(t), name) for t in item)
        else:
            total += count_text(json.dumps(item), name)
    return total


def choices(body: dict[str, Any]) -> int:
    """How many answers the request asks for (``n``, ``best_of``): each can use max_tokens."""
    most = 1
    for key in ("n", "best_of"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > most:
            most = value
    return most


def summary_comment(model: str | None, usage: Usage | None, cost: int | None) -> str:
    """``claude-sonnet-4 · 1.2k→350 tok · $0.008925`` for mitmweb's flow list."""

    def k(n: int) -> str:
        return f"{n / 1000:.1f}k" if n >= 1000 else str(n)

    parts = [model or "?"]
    if usage is not None:
        parts.append(f"{k(usage.prompt)}→{k(usage.output)} tok")
    parts.append(usd(cost) if cost is not None else "cost unknown")
    return " · ".join(parts)
