"""Usage of streamed answers, read as the events pass.

A stream that completes carries the provider's own usage (OpenAI's usage chunk, Anthropic's
``message_start`` and ``message_delta``). A stream cut off by either side is charged for its
input (the provider's count if it sent one, else the reservation's estimate) plus the output
actually delivered: its text is kept as it passes (counted in slices of ``PENDING_CHARS``)
and tokenized only when the provider's figures are missing, so a complete stream costs no
tokenizer work and needs no vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .cost import Usage, usage_from
from .sse import SSEError, SSEParser, parse_block
from .tokens import count_text

# Delivered text is kept until this many characters, then counted: a stream that reports
# its usage (nearly all) is never tokenized, and a long one holds at most this much.
PENDING_CHARS = 64 * 1024


class UsageMeter:
    """The usage of a stream: the provider's own figures as they come, and the output text
    delivered, counted only if they are missing (a stream cut off before its usage)."""

    def __init__(self, encoding_name: str = "cl100k_base") -> None:
        self.encoding = encoding_name
        self.count: Callable[[str, str], int] = count_text  # or an estimate, for the record
        self.reported: Usage | None = None  # the provider's own numbers, as they come
        self.counted = 0  # output tokens of the delivered text counted so far
        self.pending: list[str] = []  # delivered text not counted yet
        self.pending_chars = 0
        self.complete = False

    def _deliver(self, text: str) -> None:
        self.pending.append(text)
        self.pending_chars += len(text)
        if self.pending_chars > PENDING_CHARS:
            self.counted += self.count("".join(self.pending), self.encoding)
            self.pending.clear()
            self.pending_chars = 0

    @property
    def any_delivered(self) -> bool:
        """Whether any output text was delivered (without counting it)."""
        return bool(self.pending) or self.counted > 0

    @property
    def delivered(self) -> int:
        """Output tokens of the text delivered so far (counted now, if not yet)."""
        if self.pending:
            self.counted += self.count("".join(self.pending), self.encoding)
            self.pending.clear()
            self.pending_chars = 0
        return self.counted

    # Anthropic: message_start carries input (and cache) tokens, message_delta the
    # cumulative output; deltas carry the text, tool arguments and thinking.
    def observe_anthropic(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "message_start":
            self.reported = usage_from(ev.get("message") or {}) or Usage()
        elif kind == "content_block_delta":
            delta = ev.get("delta") or {}
            text = delta.get("text") or delta.get("partial_json") or delta.get("thinking")
            if text:
                self._deliver(text)
        elif kind == "message_delta":
            usage = ev.get("usage") or {}
            base = self.reported or Usage()
            merged = {
                "input_tokens": base.input,
                "cache_read_input_tokens": base.cache_read,
                "cache_creation_input_tokens": base.cache_write,
                **{k: v for k, v in usage.items() if v is not None},
            }
            self.reported = usage_from(merged)
        elif kind == "message_stop":
            self.complete = True

    # OpenAI: the usage chunk (asked for with stream_options.include_usage) at the end of
    # chat completions; ``response.completed`` for the Responses API; ``choices[].text`` for
    # legacy completions.
    def observe_openai(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        if chunk.get("usage") or kind in ("response.completed", "response.incomplete"):
            self.reported = usage_from(chunk) or self.reported
            if kind is not None:
                self.complete = True
        texts: list[Any] = []
        if isinstance(kind, str) and kind.endswith(".delta"):
            texts.append(chunk.get("delta"))
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            texts += [
                delta.get("content"),
                delta.get("refusal"),
                delta.get("reasoning_content"),
                choice.get("text"),
            ]
            for call in delta.get("tool_calls") or []:
                texts.append((call.get("function") or {}).get("arguments"))
        for text in texts:
            if isinstance(text, str) and text:
                self._deliver(text)

    def charged(self, input_estimate: int) -> Usage:
        """What the request is charged: the provider's usage if the stream completed with
        one, else its input plus the output delivered."""
        return self.charged_with(lambda: input_estimate)

    def charged_with(self, input_estimate: Callable[[], int]) -> Usage:
        """``charged``, with the input estimate asked for only when it is needed."""
        reported = self.reported
        if self.complete and reported is not None and (reported.output or not self.any_delivered):
            return reported
        if reported is not None and reported.prompt:
            return Usage(
                reported.input,
                max(reported.output, self.delivered),
                reported.cache_read,
                reported.cache_write,
            )
        return Usage(input_estimate(), self.delivered)


class StreamMeter:
    """Meters a provider's SSE stream passed through to the client unchanged, except that
    the usage-only chunk the router asked OpenAI for is removed when the client did not
    ask for it itself.

    When that chunk is to be removed, the stream is passed on block by block as each event
    completes, each block as it came (comments, ``id:`` lines, data that is not JSON or not
    UTF-8 included; CR and CRLF line endings become LF). Nothing is ever dropped silently:
    bytes of an event that never completes are handed on when the stream ends, and an event
    too large to buffer ends the metering, with what was held handed on and the rest of the
    stream passed through as it comes.
    """

    def __init__(self, anthropic: bool, encoding_name: str, strip_usage_chunk: bool) -> None:
        self.anthropic = anthropic
        self.strip = strip_usage_chunk
        self.meter = UsageMeter(encoding_name)
        self.parser = SSEParser()
        self.broken = False

    def feed(self, data: bytes) -> bytes:
        """What to send the client for ``data``; ``b""`` marks the end of the stream."""
        if self.broken:
            return data
        try:
            blocks = self.parser.blocks(data)
        except SSEError as e:
            blocks = e.blocks
            self.broken = True  # keep passing bytes through; charge what was counted
        out: list[bytes] | None = [] if self.strip else None
        for block in blocks:
            if self._observe(block) and out is not None:
                out.append(block)
                out.append(b"\n\n")
        if out is None:
            return data
        if self.broken or not data:
            out.append(self.parser.drain())
        return b"".join(out)

    def _observe(self, block: bytes) -> bool:
        """Meter one event block; False for the usage chunk to remove."""
        event = parse_block(block)
        if event is None:
            return True
        if event.data == "[DONE]":
            self.meter.complete = True
            return True
        try:
            payload = json.loads(event.data)
        except (ValueError, RecursionError):
            return True
        if not isinstance(payload, dict):
            return True
        if self.anthropic:
            self.meter.observe_anthropic(payload)
            return True
        self.meter.observe_openai(payload)
        # the usage chunk the client did not ask for
        return not (self.strip and payload.get("choices") == [] and payload.get("usage"))
