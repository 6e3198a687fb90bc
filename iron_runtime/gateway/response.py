"""Anthropic ``messages`` answers → OpenAI ``chat.completion`` answers and errors."""

from __future__ import annotations

import json
import time
from typing import Any

from . import tables


def finish_reason(stop_reason: str | None) -> str:
    return tables.FINISH_REASONS.get(stop_reason or "", tables.DEFAULT_FINISH_REASON)


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Anthropic usage. ``prompt_tokens`` counts every input token, cache
    reads and writes included; ``cached_tokens`` the reads, ``cache_write_tokens`` the writes
    (Anthropic reports the three separately, none included in another)."""
    fresh = _int(usage.get("input_tokens"))
    read = _int(usage.get("cache_read_input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    out = _int(usage.get("output_tokens"))
    prompt = fresh + read + write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out,
        "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": write},
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id", ""),
        "type": "function",
        "function": {
            "name": block.get("name", ""),
            "arguments": json.dumps(block.get("input") or {}, ensure_ascii=False),
        },
    }


def translate_response(message: dict[str, Any], model: str) -> dict[str, Any]:
    """A complete Anthropic message as an OpenAI chat completion. ``thinking`` blocks and
    server-side tool blocks are left out of the content."""
    blocks = message.get("content") or []
    text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
    calls = [tool_call(b) for b in blocks if b.get("type") == "tool_use"]
    msg: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        msg["tool_calls"] = calls
    return {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": msg,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": openai_usage(message.get("usage") or {}),
        "system_fingerprint": None,
    }


def openai_error(anthropic_type: str | None, message: str) -> dict[str, Any]:
    type_, code = tables.ERROR_TYPES.get(anthropic_type or "", tables.DEFAULT_ERROR_TYPE)
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def translate_error(status: int, body: bytes) -> dict[str, Any]:
    """An Anthropic error response (any status, any body) in OpenAI's error shape."""
    try:
        payload = json.loads(body)
        err = payload["error"]
        return openai_error(err.get("type"), str(err.get("message", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = body[:500].decode("utf-8", "replace").strip() or "no details"
        return openai_error(None, f"Anthropic answered {status}: {text}")
