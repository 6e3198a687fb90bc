"""Analytics events, as pydantic models.

The wire fields are the original's (``event_id``, ``timestamp_ms``, ``event_type``, ``model``,
``provider``, tokens and ``cost_micros``, or ``error_code``/``error_message``), plus
``latency_ms``, ``ttft_ms``, ``stream``, ``cached_tokens``, ``cost_known`` and ``request_id``.
The IC token is added only when an event is sent, never stored.

Whatever a request carries, its event can be stored: ``storable_json`` replaces text that no
UTF-8 store accepts (lone UTF-16 surrogates, which a JSON ``\\ud800`` escape produces) with
U+FFFD, and as a last resort stores a minimal failed event in its place.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

if TYPE_CHECKING:
    from iron_runtime.exchange import Exchange


def _now_ms() -> int:
    return int(time.time() * 1000)


_ID_PREFIX = secrets.randbits(64)  # per process
_id_counter = itertools.count()
_VERSION_4 = (4 << 76) | (2 << 62)  # the version and variant bits of a random UUID


def _reseed() -> None:
    """A forked child draws its own prefix: it must not repeat its parent's ids."""
    global _ID_PREFIX, _id_counter
    _ID_PREFIX, _id_counter = secrets.randbits(64), itertools.count()


os.register_at_fork(after_in_child=_reseed)


def new_event_id() -> str:
    """A UUID in the random (version 4) layout, unique across processes without a system
    call per event: 60 random bits per process, then a per-process counter."""
    n = next(_id_counter) & ((1 << 62) - 1)
    h = "%032x" % ((_ID_PREFIX << 64 & ~(0xF << 76)) | _VERSION_4 | n)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=new_event_id)
    timestamp_ms: int = Field(default_factory=_now_ms)
    provider: Literal["openai", "anthropic", "unknown"] = "unknown"
    model: str = ""
    request_id: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    stream: bool = False

    def wire(self, ic_token: str) -> dict:
        """The JSON body posted to ``/api/v1/analytics/events``."""
        return {"ic_token": ic_token, **self.model_dump(exclude_none=True)}


class LlmRequestCompleted(_EventBase):
    event_type: Literal["llm_request_completed"] = "llm_request_completed"
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_micros: int = 0
    cost_known: bool = True


class LlmRequestFailed(_EventBase):
    event_type: Literal["llm_request_failed"] = "llm_request_failed"
    error_code: str | None = None
    error_message: str | None = None
    status: int | None = None
    cost_micros: int = 0  # a failed stream can still have cost something


Event = Annotated[LlmRequestCompleted | LlmRequestFailed, Field(discriminator="event_type")]
EVENT = TypeAdapter(Event)

_SURROGATES = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """``text`` with every lone UTF-16 surrogate replaced by U+FFFD (Python strings decoded
    from JSON ``\\ud800`` escapes or with ``surrogatepass`` can hold them; UTF-8 cannot)."""
    return _SURROGATES.sub("\ufffd", text)


def storable_json(event: LlmRequestCompleted | LlmRequestFailed) -> tuple[str, str]:
    """The event's JSON for the outbox, and how it was obtained: ``"ok"``; ``"repaired"``
    (text that cannot be stored was replaced by U+FFFD); or ``"replaced"`` (the event could
    not be serialised at all: a minimal failed event with its id and time stands in)."""
    try:
        return event.model_dump_json(), "ok"
    except Exception:  # noqa: BLE001 - any value that cannot be serialised
        pass
    try:
        text = {k: scrub(v) for k, v in event.__dict__.items() if isinstance(v, str)}
        return event.model_copy(update=text).model_dump_json(), "repaired"
    except Exception:  # noqa: BLE001
        pass
    return stand_in(event).model_dump_json(), "replaced"


def stand_in(event: Any, why: str = "the event could not be stored") -> LlmRequestFailed:
    """A minimal failed event that keeps the id, time and provider of an event that cannot
    be stored as it is."""
    event_id = getattr(event, "event_id", None)
    timestamp = getattr(event, "timestamp_ms", None)
    provider = getattr(event, "provider", None)
    return LlmRequestFailed(
        event_id=scrub(event_id) if isinstance(event_id, str) else str(uuid.uuid4()),
        timestamp_ms=timestamp if type(timestamp) is int and 0 <= timestamp < 2**62 else _now_ms(),
        provider=provider if provider in ("openai", "anthropic") else "unknown",
        error_code="unstorable_event",
        error_message=why,
    )


def event_for(x: Exchange, upstream_message: str = "") -> LlmRequestCompleted | LlmRequestFailed:
    """The event of one request, from its exchange: completed for a 2xx answer that ended
    well, failed otherwise (a local refusal, a provider's error status, a broken connection
    or stream). ``upstream_message`` is the provider's error message, when it sent one."""
    common: dict[str, Any] = {
        "provider": x.provider_name,
        "model": x.model or "",
        "request_id": x.request_id,
        "latency_ms": x.elapsed_ms(),
        "ttft_ms": x.ttft_ms,
        "stream": x.stream,
    }
    status, error = x.status, x.error
    cost = x.cost_micros or 0
    if status is not None and 200 <= status < 300 and error is None:
        usage = x.usage
        known = x.cost_known is not False
        if usage is None:
            return LlmRequestCompleted(**common, cost_micros=cost, cost_known=known)
        return LlmRequestCompleted(
            **common,
            input_tokens=usage.input + usage.cache_read + usage.cache_write,
            output_tokens=usage.output,
            cached_tokens=usage.cache_read,
            cost_micros=cost,
            cost_known=known,
        )
    if error is not None:
        code, message = error.code, error.message
    else:
        code = str(status) if status is not None else "unknown"
        message = upstream_message
    return LlmRequestFailed(
        **common, error_code=code, error_message=message[:500], status=status, cost_micros=cost
    )


def error_message_of(body: bytes) -> str:
    """The message of a provider's JSON error body (either provider's shape), or ""."""
    try:
        err = json.loads(body or b"{}").get("error")
    except (ValueError, AttributeError):
        return ""
    if isinstance(err, dict):
        return str(err.get("message", ""))
    return str(err or "")
