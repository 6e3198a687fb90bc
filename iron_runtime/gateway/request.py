"""OpenAI ``chat.completions`` request → Anthropic ``messages`` request."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..errors import bad_request
from ..payload import loads_json
from . import tables
from .openai_models import ChatRequest, Message, describe

_DATA_URL = re.compile(
    r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)", re.S
)


_ANTHROPIC_TOOL_ID = re.compile(r"[A-Za-z0-9_-]+")
_NOT_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


# The shape of an id this mapping produces; a valid id of that shape is mapped as well, so
# that no id that passes unchanged can equal the mapping of another.
_MAPPED_SHAPE = re.compile(r"(?:.*_)?[0-9a-f]{16}")


def anthropic_tool_id(tool_call_id: str) -> str:
    """The id Anthropic accepts for an OpenAI tool-call id.

    Valid ids (``^[a-zA-Z0-9_-]+$``, such as Anthropic's own ``toolu_...``) pass unchanged;
    any other (``functions.get_weather:0``, produced by several OpenAI-compatible models, MCP
    servers and restored sessions) is mapped deterministically, the same way on the
    ``tool_use`` and on its ``tool_result``: its readable part, then 16 hex digits of a hash
    of the whole id. A valid id that already ends that way is mapped too, so two different
    ids never map to one (short of a 64-bit hash collision)."""
    if _ANTHROPIC_TOOL_ID.fullmatch(tool_call_id) and not _MAPPED_SHAPE.fullmatch(tool_call_id):
        return tool_call_id
    readable = _NOT_ID_CHARS.sub("_", tool_call_id).strip("_")[:40]
    digest = hashlib.sha256(tool_call_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}_{digest}" if readable else f"call_{digest}"


@dataclass(slots=True)
class Translation:
    """An Anthropic request body, and what the response translation needs to know."""

    body: dict[str, Any]
    stream: bool
    include_usage: bool
    model: str
    dropped: list[str] = field(default_factory=list)


def translate_request(
    payload: dict[str, Any], max_output_tokens: Callable[[str], int | None] = lambda m: None
) -> Translation:
    """Translate, or raise a 400 ``RouterError`` naming what cannot be translated.

    ``max_output_tokens(model)`` gives the model's maximum output (from the price table),
    used as ``max_tokens`` when the client sets none. Tool-call arguments (JSON strings the
    gateway parses) nested deeper than ``payload.MAX_JSON_DEPTH`` are refused like a body.
    """
    for name, why in tables.REFUSED_FIELDS.items():
        if payload.get(name) not in (None, False):
            raise bad_request(f"'{name}' is not supported for Claude models: {why}.", name)
    try:
        req = ChatRequest.model_validate(payload)
    except ValidationError as e:
        message, param = describe(e)
        raise bad_request(f"Invalid request: {message}", param) from None
    if (req.n or 1) > 1:
        raise bad_request(
            "'n' > 1 is not supported for Claude models: send n separate requests.", "n"
        )

    system, messages = _messages(req.messages)
    body: dict[str, Any] = {"model": req.model}
    max_tokens = req.max_completion_tokens or req.max_tokens
    body["max_tokens"] = max_tokens or max_output_tokens(req.model) or tables.FALLBACK_MAX_TOKENS
    body["messages"] = messages

    if req.response_format is not None and req.response_format.type != "text":
        system.append(_json_instruction(req.response_format.type, req.response_format.json_schema))
    if system:
        body["system"] = "\n".join(system)
    if req.temperature is not None:
        body["temperature"] = min(req.temperature, tables.MAX_TEMPERATURE)
    if req.top_p is not None and req.temperature is None:
        body["top_p"] = req.top_p  # current Claude models refuse temperature and top_p together
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    stops = [s for s in stops if s.strip()]
    if stops:
        body["stop_sequences"] = stops
    if req.stream:
        body["stream"] = True
    if req.user:
        body["metadata"] = {"user_id": req.user}
    if req.tools:
        body["tools"] = [
            {
                "name": t.function.name,
                **({"description": t.function.description} if t.function.description else {}),
                "input_schema": t.function.parameters or {"type": "object", "properties": {}},
            }
            for t in req.tools
        ]
        choice = _tool_choice(req)
        if choice is not None:
            body["tool_choice"] = choice
    dropped = sorted(
        k for k in payload if k not in tables.TRANSLATED_FIELDS and k not in tables.REFUSED_FIELDS
    )
    if req.top_p is not None and req.temperature is not None:
        dropped.append("top_p")
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return Translation(body, bool(req.stream), include_usage, req.model, dropped)


def _tool_choice(req: ChatRequest) -> dict[str, Any] | None:
    tc = req.tool_choice
    if tc is None:
        choice: dict[str, Any] | None = None
    elif isinstance(tc, str):
        choice = dict(tables.TOOL_CHOICES[tc])
    else:
        names = {t.function.name for t in req.tools or []}
        if tc.function.name not in names:
            raise bad_request(
                f"tool_choice names '{tc.function.name}', which is not in 'tools'.", "tool_choice"
            )
        choice = {"type": "tool", "name": tc.function.name}
    if req.parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return choice


def _json_instruction(kind: str, spec: dict[str, Any] | None) -> str:
    if kind == "json_schema" and spec and isinstance(spec.get("schema"), dict):
        return (
            "Respond with only a JSON value, no prose and no code fences, that conforms "
            f"to this JSON schema: {json.dumps(spec['schema'], separators=(',', ':'))}"
        )
    return "Respond with only a valid JSON object, no prose and no code fences."


def _text_of(content: str | list[dict[str, Any]] | None, where: str) -> str:
    """Plain text of a system, developer or tool message."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise bad_request(
                f"{where}.content.{i}: only text parts are allowed here.", f"{where}.content"
            )
        parts.append(part["text"])
    return "".join(parts)


def _messages(msgs: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """Hoist system/developer messages; turn the rest into alternating Anthropic turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # merge consecutive same-role turns
        else:
            turns.append({"role": role, "content": blocks})

    for i, m in enumerate(msgs):
        where = f"messages.{i}"
        if m.role in ("system", "developer"):
            text = _text_of(m.content, where)
            if text.strip():
                system.append(text)
        elif m.role == "user":
            add("user", _user_blocks(m.content, where))
        elif m.role == "assistant":
            add("assistant", _assistant_blocks(m, where))
        elif m.role == "tool":
            if not m.tool_call_id:
                raise bad_request(
                    f"{where}: a tool message needs 'tool_call_id'.", f"{where}.tool_call_id"
                )
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": anthropic_tool_id(m.tool_call_id),
            }
            text = _text_of(m.content, where)
            if text:
                result["content"] = text
            add("user", [result])
        else:
            raise bad_request(
                f"{where}: the legacy 'function' role is not supported; use 'tool' messages.",
                f"{where}.role",
            )

    if not turns:
        raise bad_request("messages: at least one user message with content is needed.", "messages")
    if turns[0]["role"] != "user":
        raise bad_request(
            "messages: Claude models need the conversation (after system "
            "messages) to start with a user message.",
            "messages",
        )
    last = turns[-1]
    if last["role"] == "assistant":  # a prefill may not end in whitespace
        for block in reversed(last["content"]):
            if block["type"] == "text":
                block["text"] = block["text"].rstrip()
                if not block["text"]:
                    last["content"].remove(block)
                break
        if not last["content"]:
            turns.pop()
    _order_tool_results(turns)
    return system, turns


def _order_tool_results(turns: list[dict[str, Any]]) -> None:
    """Within a user turn, tool results come before any other content (Anthropic's rule)."""
    for turn in turns:
        if turn["role"] == "user" and len(turn["content"]) > 1:
            blocks = turn["content"]
            turn["content"] = [b for b in blocks if b["type"] == "tool_result"] + [
                b for b in blocks if b["type"] != "tool_result"
            ]


def _user_blocks(content: str | list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"{where}.content.{j}.text must be a string.", f"{where}.content")
            if text.strip():
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), f"{where}.content.{j}"))
        elif kind == "file":
            blocks.append(_file_block(part.get("file"), f"{where}.content.{j}"))
        else:
            raise bad_request(
                f"{where}.content.{j}: content part type {kind!r} is not "
                "supported for Claude models.",
                f"{where}.content",
            )
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image if isinstance(image, str) else None
    if not isinstance(url, str):
        raise bad_request(f"{where}.image_url.url is required.", f"{where}.image_url")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    m = _DATA_URL.fullmatch(url)
    if m is None:
        raise bad_request(
            f"{where}.image_url.url must be an http(s) URL or a base64 data URL.",
            f"{where}.image_url",
        )
    media = (m["type"] or "").lower()
    if media not in tables.IMAGE_MEDIA_TYPES:
        raise bad_request(
            f"{where}: image type {media or 'unknown'!r} is not supported; use "
            f"one of {', '.join(sorted(tables.IMAGE_MEDIA_TYPES))}.",
            f"{where}.image_url",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": m["data"]}}


def _file_block(file: Any, where: str) -> dict[str, Any]:
    data = file.get("file_data") if isinstance(file, dict) else None
    m = _DATA_URL.fullmatch(data) if isinstance(data, str) else None
    if m is None or (m["type"] or "").lower() != "application/pdf":
        raise bad_request(
            f"{where}: only PDF files given inline as file_data "
            "(data:application/pdf;base64,...) are supported.",
            f"{where}.file",
        )
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": m["data"]},
    }


def _assistant_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if isinstance(m.content, str):
        if m.content.strip():
            blocks.append({"type": "text", "text": m.content})
    elif m.content:
        for j, part in enumerate(m.content):
            text = part.get("text") if part.get("type") == "text" else part.get("refusal")
            if part.get("type") not in ("text", "refusal") or not isinstance(text, str):
                raise bad_request(
                    f"{where}.content.{j}: assistant content parts must be text.",
                    f"{where}.content",
                )
            if text.strip():
                blocks.append({"type": "text", "text": text})
    for k, call in enumerate(m.tool_calls or []):
        try:
            args = (
                loads_json(
                    call.function.arguments,
                    f"{where}.tool_calls.{k}.function.arguments",
                    f"{where}.tool_calls",
                )
                if call.function.arguments.strip()
                else {}
            )
        except ValueError:
            args = None
        if not isinstance(args, dict):
            raise bad_request(
                f"{where}.tool_calls.{k}.function.arguments must be a JSON object "
                f"(got {call.function.arguments[:80]!r}).",
                f"{where}.tool_calls",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": anthropic_tool_id(call.id),
                "name": call.function.name,
                "input": args,
            }
        )
    return blocks
