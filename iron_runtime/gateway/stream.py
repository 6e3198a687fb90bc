"""Incremental translation of an Anthropic SSE stream into OpenAI chunk events."""

from __future__ import annotations

import json
import time
from typing import Any

from ..metering import UsageMeter
from ..sse import SSEError, SSEParser
from .response import finish_reason, openai_error, openai_usage


def _sse(payload: Any) -> bytes:
    try:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate (echoed model name): keep it escaped
        data = json.dumps(payload, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"


class GatewayStream:
    """Feed Anthropic SSE bytes as they arrive, get OpenAI ``chat.completion.chunk`` bytes.

    Emits the role chunk first, text deltas, tool calls (id and name first, then argument
    deltas, with a stable ``index`` per tool), a final chunk with ``finish_reason``, a
    usage-only chunk when the client asked for ``stream_options.include_usage``, then
    ``data: [DONE]``. An upstream ``error`` event becomes an OpenAI error event and ends the
    stream. State is a few counters: memory does not grow with the answer.

    Anthropic's lines may end with LF, CRLF or CR. What cannot be translated is never
    dropped silently: an event that is not JSON, too large, or left unfinished when the
    stream ends becomes an OpenAI error event saying so.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.parser = SSEParser()
        self.id = ""
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool index
        self.tool_args_sent: set[int] = set()  # tool indexes that had argument deltas
        self.started = False
        self.finished = False  # [DONE] or an error was emitted
        self.error: str | None = None
        self.meter = UsageMeter()  # what the budget charges, also for a cut stream

    # -- public ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Translate what has arrived; call with ``b""`` once the upstream stream ended."""
        if self.finished:
            return b""
        out: list[bytes] = []
        overflow: SSEError | None = None
        try:
            events = self.parser.feed(data)
        except SSEError as e:
            events, overflow = e.events, e
        try:
            for event in events:
                out.append(self._event(event.event, event.data))
                if self.finished:
                    break
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            out.append(self._fail("api_error", f"Malformed event from Anthropic: {e}"))
        if overflow is not None and not self.finished:
            out.append(self._fail("api_error", f"Malformed event from Anthropic: {overflow}"))
        if not data and not self.finished:
            held = len(self.parser.pending)
            out.append(
                self._fail(
                    "api_error",
                    "Anthropic's stream ended before the message was complete"
                    + (f" ({held} bytes of an unfinished event were left)." if held else "."),
                )
            )
        return b"".join(out)

    @property
    def complete(self) -> bool:
        return self.finished and self.error is None

    # -- events -----------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            payload["usage"] = None
        return _sse(payload)

    def _event(self, name: str | None, data: str) -> bytes:
        ev = json.loads(data)
        self.meter.observe_anthropic(ev)
        kind = ev.get("type", name)
        if kind == "message_start":
            msg = ev["message"]
            self.id = msg.get("id", "")
            self.model = msg.get("model") or self.model
            self.usage = dict(msg.get("usage") or {})
            self.started = True
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = ev["content_block"]
            if block.get("type") == "tool_use":
                index = self.tools[ev["index"]] = len(self.tools)
                return self._chunk(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": block.get("id", ""),
                                "type": "function",
                                "function": {"name": block.get("name", ""), "arguments": ""},
                            }
                        ]
                    }
                )
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return b""
        if kind == "content_block_delta":
            delta = ev["delta"]
            dtype = delta.get("type")
            if dtype == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if dtype == "input_json_delta" and ev["index"] in self.tools:
                partial = delta.get("partial_json", "")
                if not partial:
                    return b""
                index = self.tools[ev["index"]]
                self.tool_args_sent.add(index)
                return self._chunk(
                    {"tool_calls": [{"index": index, "function": {"arguments": partial}}]}
                )
            return b""  # thinking, signatures, citations: not part of an OpenAI answer
        if kind == "content_block_stop":
            stopped = self.tools.get(ev["index"])
            if stopped is not None and stopped not in self.tool_args_sent:
                # a tool without arguments: OpenAI sends "{}", which clients can parse
                self.tool_args_sent.add(stopped)
                return self._chunk(
                    {"tool_calls": [{"index": stopped, "function": {"arguments": "{}"}}]}
                )
            return b""
        if kind == "message_delta":
            self.stop_reason = (ev.get("delta") or {}).get("stop_reason") or self.stop_reason
            for key, value in (ev.get("usage") or {}).items():
                if value is not None:
                    self.usage[key] = value  # cumulative counts
            return b""
        if kind == "message_stop":
            self.finished = True
            out = self._chunk({}, finish_reason(self.stop_reason))
            if self.include_usage:
                out += _sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": openai_usage(self.usage),
                    }
                )
            return out + DONE
        if kind == "error":
            err = ev.get("error") or {}
            return self._fail(err.get("type"), str(err.get("message", "unknown error")))
        return b""  # ping and event types added later

    def _fail(self, anthropic_type: str | None, message: str) -> bytes:
        self.finished = True
        self.error = message
        return _sse(openai_error(anthropic_type, message))
