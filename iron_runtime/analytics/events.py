"""Analytics events (SPEC §8), as pydantic models.

The wire fields are the original's (``event_id``, ``timestamp_ms``, ``event_type``, ``model``,
``provider``, tokens and ``cost_micros``, or ``error_code``/``error_message``), plus
``latency_ms``, ``ttft_ms``, ``stream``, ``cached_tokens``, ``cost_known`` and ``request_id``.
The IC token is added only when an event is sent, never stored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def _now_ms() -> int:
    return int(time.time() * 1000)


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
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
