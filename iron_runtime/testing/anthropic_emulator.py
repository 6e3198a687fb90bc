"""Emulator of the Anthropic Messages API: ``/v1/messages`` (JSON and the full SSE event
sequence), as strict as the real API about what it accepts, so that translation bugs fail.

It refuses: a missing ``x-api-key``/``anthropic-version``/``max_tokens``; unknown top-level
fields; roles other than user/assistant (a ``system`` message included); a first turn that is
not the user's; two turns of the same role in a row; empty text blocks; whitespace-only stop
sequences; a temperature outside 0..1; a final assistant turn ending in whitespace;
``tool_use`` blocks not answered by ``tool_result`` blocks in the next turn, and results that
answer no call; tool results after other content in a turn; malformed images, tools and
``tool_choice``.

What it answers is an echo of the last user text, or what a test scripted with
``emu.script(blocks, ...)``: text, ``thinking`` and ``tool_use`` blocks, cut at
``max_tokens`` like the real model (one token per word, a tool call counts its JSON).
Streams end their lines with LF unless ``sse_line_ending`` (``"crlf"``, ``"cr"``) or a
request's ``x-emulator-sse-line-ending`` header says otherwise.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from .emulator import Emulator, RecordedRequest, Reply, sse
from .openai_emulator import sse_line_ending, with_line_endings
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
BLOCK_TYPES = {
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
}
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")


class Invalid(Exception):
    pass


@dataclass
class Scripted:
    blocks: list[dict[str, Any]]
    stop_reason: str | None = None  # default: tool_use if a tool is called, else end_turn
    error_after_events: int | None = None  # stream an error event after this many events


def _error(status: int, message: str, type_: str = "invalid_request_error") -> Reply:
    return Reply(status, {"type": "error", "error": {"type": type_, "message": message}})


class AnthropicEmulator(Emulator):
    name = "anthropic"

    def __init__(self, api_key: str = "sk-ant-test-anthropic-0123456789", **kw: Any) -> None:
        super().__init__(api_key, **kw)
        self.reply_text: str | None = None
        self.cache_read_tokens = 0
        self.cache_write_tokens = 0
        self.scripts: collections.deque[Scripted] = collections.deque()
        self.sse_line_ending = "lf"

    def reset(self) -> None:
        super().reset()
        self.scripts.clear()
        self.sse_line_ending = "lf"
        self.cache_read_tokens = self.cache_write_tokens = 0
        self.reply_text = None

    def script(
        self,
        blocks: list[dict[str, Any]],
        stop_reason: str | None = None,
        error_after_events: int | None = None,
    ) -> None:
        """Answer the next message request with these content blocks (tool_use blocks get
        an id if they have none)."""
        self.scripts.append(Scripted(blocks, stop_reason, error_after_events))

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
        try:
            ending = sse_line_ending(request, self.sse_line_ending)
        except ValueError as e:
            return _error(400, str(e))
        try:
            validate(body)
        except Invalid as e:
            reply = _error(400, str(e))
        else:
            reply = self._message(body)
            if reply.events is not None and ending != "lf":
                reply.events = with_line_endings(reply.events, ending)
        reply.fault = fault
        reply.headers.update(
            {
                "request-id": f"req_emu_{next(_ids)}",
                "anthropic-ratelimit-requests-remaining": "9999",
            }
        )
        return reply

    # -- answering ------------------------------------------------------------------------

    def _usage(self, prompt: int, output: int) -> dict[str, Any]:
        return {
            "input_tokens": prompt,
            "output_tokens": output,
            "cache_creation_input_tokens": self.cache_write_tokens,
            "cache_read_input_tokens": self.cache_read_tokens,
        }

    def _default_blocks(self, body: dict[str, Any], last_user: str) -> list[dict[str, Any]]:
        tools = [t for t in body.get("tools") or [] if "name" in t]
        choice = body.get("tool_choice") or {"type": "auto"}
        tool = None
        if choice.get("type") != "none" and _last_user_has_text(body["messages"]):
            tool = chosen_tool(
                tools,
                choice.get("name") if choice.get("type") == "tool" else None,
                last_user,
                choice.get("type") == "any",
            )
        if tool is not None:
            return [
                {
                    "type": "tool_use",
                    "name": tool["name"],
                    "input": arguments_for(tool.get("input_schema")),
                }
            ]
        return [{"type": "text", "text": "".join(reply_words(last_user, self.reply_text))}]

    def _message(self, body: dict[str, Any]) -> Reply:
        model = body["model"]
        prompt = count_tokens(text_of(body.get("system") or ""))
        last_user = ""
        for msg in body["messages"]:
            text = text_of(msg["content"])
            prompt += count_tokens(text) + 3
            if msg["role"] == "user" and text:
                last_user = text
        scripted = self.scripts.popleft() if self.scripts else None
        blocks = [
            dict(b)
            for b in (scripted.blocks if scripted else self._default_blocks(body, last_user))
        ]
        for b in blocks:
            if b["type"] == "tool_use":
                b.setdefault("id", f"toolu_emu{next(_ids)}")
        # cut at max_tokens, like the model: blocks are emitted token by token
        budget = body["max_tokens"]
        stop_reason = (
            scripted.stop_reason
            if scripted and scripted.stop_reason
            else "tool_use"
            if any(b["type"] == "tool_use" for b in blocks)
            else "end_turn"
        )
        pieces: list[tuple[dict[str, Any], list[str]]] = []
        used = 0
        for b in blocks:
            parts = _pieces(b)
            room = budget - used
            if len(parts) > room:
                pieces.append((b, parts[:room]))
                used = budget
                stop_reason = "max_tokens"
                break
            pieces.append((b, parts))
            used += len(parts)
        final_blocks = [
            _assemble(b, parts) for b, parts in pieces if parts or b["type"] == "tool_use"
        ]
        message = {
            "id": f"msg_emu{next(_ids)}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": final_blocks,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": self._usage(prompt, used),
        }
        if body.get("stream"):
            events = self._stream(message, pieces)
            if scripted and scripted.error_after_events is not None:
                events = _error_after(events, scripted.error_after_events)
            return Reply(200, events=events)
        return Reply(200, message)

    def _stream(self, message: dict[str, Any], pieces: list[tuple[dict[str, Any], list[str]]]):
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        yield sse({"type": "message_start", "message": start}, "message_start")
        index = 0
        for block, parts in pieces:
            kind = block["type"]
            if kind != "tool_use" and not parts:
                continue
            if kind == "tool_use":
                head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                delta_of = lambda p: {"type": "input_json_delta", "partial_json": p}  # noqa: E731
            elif kind == "thinking":
                head = {"type": "thinking", "thinking": "", "signature": ""}
                delta_of = lambda p: {"type": "thinking_delta", "thinking": p}  # noqa: E731
            else:
                head = {"type": "text", "text": ""}
                delta_of = lambda p: {"type": "text_delta", "text": p}  # noqa: E731
            yield sse(
                {"type": "content_block_start", "index": index, "content_block": head},
                "content_block_start",
            )
            if index == 0:
                yield sse({"type": "ping"}, "ping")
            for part in parts:
                yield sse(
                    {"type": "content_block_delta", "index": index, "delta": delta_of(part)},
                    "content_block_delta",
                )
            if kind == "thinking":
                yield sse(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": "c2ln"},
                    },
                    "content_block_delta",
                )
            yield sse({"type": "content_block_stop", "index": index}, "content_block_stop")
            index += 1
        yield sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
            "message_delta",
        )
        yield sse({"type": "message_stop"}, "message_stop")


def _error_after(events, count: int):
    for i, event in enumerate(events):
        if i == count:
            yield sse(
                {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                "error",
            )
            return
        yield event


def _pieces(block: dict[str, Any]) -> list[str]:
    """The streamed pieces of a block; one output token each."""
    if block["type"] == "tool_use":
        args = json.dumps(block.get("input") or {})
        return [] if args == "{}" else [args[i : i + 8] for i in range(0, len(args), 8)]
    text: str = block["text"] if block["type"] == "text" else block.get("thinking", "")
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0]


def _assemble(block: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    joined = "".join(parts)
    if block["type"] == "tool_use":
        try:
            value = json.loads(joined) if joined else {}
        except ValueError:
            value = {}  # cut mid-arguments: the real API returns what it could parse
        return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": value}
    if block["type"] == "thinking":
        return {"type": "thinking", "thinking": joined, "signature": "c2ln"}
    return {"type": "text", "text": joined}


def _last_user_has_text(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]
    if last["role"] != "user":
        return False
    content = last["content"]
    return isinstance(content, str) or any(b.get("type") == "text" for b in content)


# -- validation -------------------------------------------------------------------------------


def validate(body: dict[str, Any]) -> None:
    for name in body:
        if name not in MESSAGES_FIELDS:
            raise Invalid(f"{name}: Extra inputs are not permitted")
    for name, types, label in _FIELD_TYPES:
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) != (bool in types) or not isinstance(value, types)
        ):
            raise Invalid(f"{name}: Input should be {label}")
    if not isinstance(body.get("model"), str):
        raise Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise Invalid("max_tokens: Field required")
    if max_tokens < 1:
        raise Invalid("max_tokens: must be greater than or equal to 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or any(
            not isinstance(b, dict) or b.get("type") != "text" for b in system
        ):
            raise Invalid("system: Input should be a string or a list of text blocks")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    pending_tool_ids: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            role = msg.get("role") if isinstance(msg, dict) else None
            hint = (
                " (use the top-level system parameter for system prompts)"
                if role == "system"
                else ""
            )
            raise Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'{hint}")
        if i == 0 and msg["role"] != "user":
            raise Invalid('messages: first message must use the "user" role')
        if i > 0 and messages[i - 1]["role"] == msg["role"]:
            raise Invalid('messages: roles must alternate between "user" and "assistant"')
        blocks = _blocks(
            msg.get("content"),
            f"messages.{i}",
            final=(i == len(messages) - 1 and msg["role"] == "assistant"),
        )
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if msg["role"] == "user":
            if pending_tool_ids - set(results):
                raise Invalid(
                    f"messages.{i}: tool_use ids were found without tool_result blocks "
                    f"immediately after: {sorted(pending_tool_ids - set(results))}"
                )
            if set(results) - pending_tool_ids:
                raise Invalid(
                    f"messages.{i}: unexpected tool_use_id found in tool_result "
                    f"blocks: {sorted(set(results) - pending_tool_ids)}"
                )
            kinds = [b["type"] for b in blocks]
            if results and kinds[: len(results)] != ["tool_result"] * len(results):
                raise Invalid(f"messages.{i}: tool_result blocks must come first in the content")
            pending_tool_ids = set()
        else:
            if results:
                raise Invalid(f"messages.{i}: tool_result blocks are only allowed in user turns")
            pending_tool_ids = {b["id"] for b in blocks if b["type"] == "tool_use"}
    for seq in body.get("stop_sequences") or []:
        if not isinstance(seq, str) or not seq.strip():
            raise Invalid("stop_sequences: each stop sequence must contain non-whitespace")
    for name in ("temperature", "top_p", "top_k"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise Invalid(f"{name}: Input should be a valid number")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    temperature = body.get("temperature")
    if temperature is not None and body.get("top_p") is not None:
        raise Invalid("`temperature` and `top_p` cannot both be specified for this model")
    if temperature is not None and not (0 <= temperature <= 1):
        raise Invalid("temperature: must be between 0 and 1")
    metadata = body.get("metadata")
    if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
        raise Invalid("metadata: only user_id is permitted")
    tools = body.get("tools")
    names = set()
    for j, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or not TOOL_NAME.fullmatch(str(tool.get("name", ""))):
            raise Invalid(f"tools.{j}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Invalid(f"tools.{j}.input_schema: Input should be a JSON schema of type object")
        if set(tool) - {"name", "description", "input_schema", "cache_control", "type"}:
            raise Invalid(f"tools.{j}: Extra inputs are not permitted")
        names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        if not tools:
            raise Invalid("tool_choice: may only be specified while providing tools")
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if kind == "tool" and choice.get("name") not in names:
            raise Invalid("tool_choice.name: must name one of the tools")
        if set(choice) - {"type", "name", "disable_parallel_tool_use"}:
            raise Invalid("tool_choice: Extra inputs are not permitted")


_FIELD_TYPES: list[tuple[str, tuple[type, ...], str]] = [
    ("tools", (list,), "a valid list"),
    ("tool_choice", (dict,), "a valid dictionary"),
    ("stop_sequences", (list,), "a valid list"),
    ("system", (str, list), "a string or a list of text blocks"),
    ("metadata", (dict,), "a valid dictionary"),
    ("thinking", (dict,), "a valid dictionary"),
    ("stream", (bool,), "a valid boolean"),
]


def _blocks(content: Any, where: str, final: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content:
            raise Invalid(f"{where}.content: text content must be non-empty")
        if final and content != content.rstrip():
            raise Invalid("final assistant content cannot end with trailing whitespace")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise Invalid(f"{where}.content: Input should be a non-empty string or list")
    for k, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        at = f"{where}.content.{k}"
        if kind not in BLOCK_TYPES:
            raise Invalid(f"{at}.type: unknown content block type {kind!r}")
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise Invalid(f"{at}: text content blocks must be non-empty")
            if final and k == len(content) - 1 and block["text"] != block["text"].rstrip():
                raise Invalid("final assistant content cannot end with trailing whitespace")
        elif kind in ("image", "document"):
            source = block.get("source") or {}
            if source.get("type") == "base64":
                allowed = IMAGE_TYPES if kind == "image" else {"application/pdf"}
                if source.get("media_type") not in allowed or not source.get("data"):
                    raise Invalid(f"{at}.source: invalid base64 {kind} source")
            elif source.get("type") == "url":
                if not str(source.get("url", "")).startswith(("http://", "https://")):
                    raise Invalid(f"{at}.source.url: must be an http(s) URL")
            else:
                raise Invalid(f"{at}.source.type: Input should be 'base64' or 'url'")
        elif kind == "tool_use":
            if not isinstance(block.get("input"), dict) or not block.get("id"):
                raise Invalid(f"{at}: tool_use blocks need an id and an object input")
            if not TOOL_ID.fullmatch(str(block["id"])):
                raise Invalid(f"{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
        elif kind == "tool_result":
            if not block.get("tool_use_id"):
                raise Invalid(f"{at}.tool_use_id: Field required")
            if not TOOL_ID.fullmatch(str(block["tool_use_id"])):
                raise Invalid(f"{at}.tool_use_id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    return content
