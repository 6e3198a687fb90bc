"""Emulator of the Anthropic Messages API: ``/v1/messages`` (JSON and the full SSE event
sequence), with the real API's strictness: ``x-api-key`` and ``anthropic-version`` required,
``max_tokens`` required, unknown fields and ``system`` messages refused."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from .emulator import Emulator, RecordedRequest, Reply, sse
from .script import arguments_for, chosen_tool, count_tokens, reply_words, text_of

_ids = itertools.count(1)

MESSAGES_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
}


def _error(status: int, message: str, type_: str = "invalid_request_error") -> Reply:
    return Reply(status, {"type": "error", "error": {"type": type_, "message": message}})


class AnthropicEmulator(Emulator):
    name = "anthropic"

    def __init__(self, api_key: str = "sk-ant-test-anthropic-0123456789", **kw: Any) -> None:
        super().__init__(api_key, **kw)
        self.reply_text: str | None = None
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0

    def handle(self, request: RecordedRequest) -> Reply:
        path = request.path.partition("?")[0]
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "invalid x-api-key", "authentication_error")
        version = request.headers.get("anthropic-version")
        if not version:
            return _error(400, "anthropic-version: header is required")
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", version):
            return _error(400, f"anthropic-version: invalid version {version!r}")
        if path != "/v1/messages" or request.method != "POST":
            return _error(404, f"Not found: {request.method} {path}", "not_found_error")
        fault = self.next_fault()
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(400, "Request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object")
        reply = self._validate(body) or self._message(body)
        reply.fault = fault
        reply.headers.update(
            {
                "request-id": f"req_emu_{next(_ids)}",
                "anthropic-ratelimit-requests-remaining": "9999",
            }
        )
        return reply

    def _validate(self, body: dict[str, Any]) -> Reply | None:
        for name in body:
            if name not in MESSAGES_FIELDS:
                return _error(400, f"{name}: Extra inputs are not permitted")
        if not isinstance(body.get("model"), str):
            return _error(400, "model: Field required")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return _error(400, "max_tokens: Field required")
        if max_tokens < 1:
            return _error(400, "max_tokens: must be greater than or equal to 1")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages: at least one message is required")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
                role = msg.get("role") if isinstance(msg, dict) else None
                hint = (
                    " (use the top-level system parameter for system prompts)"
                    if role == "system"
                    else ""
                )
                return _error(
                    400, f"messages.{i}.role: Input should be 'user' or 'assistant'{hint}"
                )
            content = msg.get("content")
            if isinstance(content, str):
                if not content and not (i == len(messages) - 1 and msg["role"] == "assistant"):
                    return _error(400, f"messages.{i}: text content blocks must be non-empty")
            elif not isinstance(content, list):
                return _error(400, f"messages.{i}.content: Input should be a string or a list")
        if messages[0]["role"] != "user":
            return _error(400, 'messages: first message must use the "user" role')
        for seq in body.get("stop_sequences") or []:
            if not isinstance(seq, str) or not seq.strip():
                return _error(400, "stop_sequences: each stop sequence must contain non-whitespace")
        temperature = body.get("temperature")
        if temperature is not None and not (0 <= temperature <= 1):
            return _error(400, "temperature: must be between 0 and 1")
        return None

    def _usage(self, prompt: int, output: int) -> dict[str, Any]:
        return {
            "input_tokens": prompt,
            "output_tokens": output,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
        }

    def _message(self, body: dict[str, Any]) -> Reply:
        model = body["model"]
        prompt = count_tokens(text_of(body.get("system") or ""))
        last_user = ""
        for msg in body["messages"]:
            text = text_of(msg["content"])
            prompt += count_tokens(text) + 3
            if msg["role"] == "user":
                last_user = text
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and "name" in t]
        choice = body.get("tool_choice") or {"type": "auto"}
        tool = None
        if choice.get("type") != "none" and body["messages"][-1]["role"] == "user":
            tool = chosen_tool(
                tools,
                choice.get("name") if choice.get("type") == "tool" else None,
                last_user,
                choice.get("type") == "any",
            )
        words = reply_words(last_user, self.reply_text)
        stop_reason = "end_turn"
        if tool is not None:
            words, stop_reason = [], "tool_use"
        elif len(words) > body["max_tokens"]:
            words, stop_reason = words[: body["max_tokens"]], "max_tokens"
        blocks: list[dict[str, Any]] = []
        if words:
            blocks.append({"type": "text", "text": "".join(words)})
        if tool is not None:
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_emu{next(_ids)}",
                    "name": tool["name"],
                    "input": arguments_for(tool.get("input_schema")),
                }
            )
        output = len(words) + sum(
            count_tokens(json.dumps(b["input"])) + 2 for b in blocks if b["type"] == "tool_use"
        )
        message = {
            "id": f"msg_emu{next(_ids)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": self._usage(prompt, output),
        }
        if body.get("stream"):
            return Reply(200, events=self._stream(message, words))
        return Reply(200, message)

    def _stream(self, message: dict[str, Any], words: list[str]):
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        yield sse({"type": "message_start", "message": start}, "message_start")
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                yield sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
                if index == 0:
                    yield sse({"type": "ping"}, "ping")
                for word in words:
                    yield sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "text_delta", "text": word},
                        },
                        "content_block_delta",
                    )
            else:
                yield sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    },
                    "content_block_start",
                )
                args = json.dumps(block["input"])
                for i in range(0, len(args), 8):
                    yield sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": args[i : i + 8]},
                        },
                        "content_block_delta",
                    )
            yield sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        yield sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
            "message_delta",
        )
        yield sse({"type": "message_stop"}, "message_stop")
