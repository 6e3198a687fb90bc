"""Emulator of the OpenAI API: ``/v1/chat/completions`` (JSON and SSE), ``/v1/embeddings``,
``/v1/models``."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

from .emulator import Emulator, RecordedRequest, Reply, sse
from .script import arguments_for, chosen_tool, count_tokens, reply_words, text_of

_ids = itertools.count(1)

# Line endings the SSE spec allows; an emulator can be told to use any of them.
SSE_LINE_ENDINGS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def with_line_endings(events: Iterable[bytes], ending: str) -> Iterator[bytes]:
    """The framed SSE events with every line ending written as ``ending`` (``"lf"``,
    ``"crlf"`` or ``"cr"``). Safe because the events' JSON payloads never hold a raw
    newline."""
    eol = SSE_LINE_ENDINGS[ending]
    for event in events:
        yield event.replace(b"\n", eol)


def sse_line_ending(request: RecordedRequest, default: str) -> str:
    """The line ending to stream with: the request's ``x-emulator-sse-line-ending`` header
    (``lf``, ``crlf`` or ``cr``; the router passes it through), else the emulator's own."""
    ending = request.headers.get("x-emulator-sse-line-ending", default).lower()
    if ending not in SSE_LINE_ENDINGS:
        raise ValueError(f"x-emulator-sse-line-ending must be one of {', '.join(SSE_LINE_ENDINGS)}")
    return ending


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Reply:
    return Reply(
        status, {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


_NUMBER = (int, float)
# Optional fields of chat.completions and the JSON types the API accepts for them.
_CHAT_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER,
    "stream": (bool,),
    "parallel_tool_calls": (bool,),
    "stream_options": (dict,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "stop": (str, list),
    "user": (str,),
    "metadata": (dict,),
    "response_format": (dict,),
    "seed": (int,),
}
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _invalid_chat_field(body: dict[str, Any]) -> tuple[str, str] | None:
    """(param, message) of the first field OpenAI would refuse for its type, or None."""
    for name, types in _CHAT_FIELD_TYPES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            return (
                name,
                f"Invalid type for '{name}': expected {expected}, got {type(value).__name__}.",
            )
    for name in ("max_tokens", "max_completion_tokens", "n"):
        if isinstance(body.get(name), int) and body[name] < 1:
            return name, f"Invalid '{name}': integer below minimum value 1."
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice not in ("none", "auto", "required"):
        return "tool_choice", f"Invalid value for 'tool_choice': {choice!r}."
    if isinstance(choice, dict) and not (
        isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str)
    ):
        return "tool_choice", "Missing required parameter: 'tool_choice.function.name'."
    temperature = body.get("temperature")
    if isinstance(temperature, _NUMBER) and not 0 <= temperature <= 2:
        return "temperature", "Invalid 'temperature': must be between 0 and 2."
    for i, msg in enumerate(body["messages"]):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            return f"messages[{i}]", f"Invalid value for 'messages[{i}].role'."
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            return f"messages[{i}].content", f"Invalid type for 'messages[{i}].content'."
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            return f"messages[{i}].content", f"Invalid content parts in 'messages[{i}]'."
        calls = msg.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list) and all(isinstance(c, dict) for c in calls)
        ):
            return f"messages[{i}].tool_calls", f"Invalid type for 'messages[{i}].tool_calls'."
    return None


class OpenAIEmulator(Emulator):
    """``sse_line_ending`` (``"lf"``, the default, ``"crlf"`` or ``"cr"``) sets how streamed
    answers end their lines; a request's ``x-emulator-sse-line-ending`` header overrides it."""

    name = "openai"

    def __init__(self, api_key: str = "sk-test-openai-0123456789", **kw: Any) -> None:
        super().__init__(api_key, **kw)
        self.reply_text: str | None = None
        self.cached_tokens = 0
        self.sse_line_ending = "lf"

    def reset(self) -> None:
        super().reset()
        self.reply_text = None
        self.cached_tokens = 0
        self.sse_line_ending = "lf"

    def handle(self, request: RecordedRequest) -> Reply:
        path = request.path.partition("?")[0]
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        if path == "/v1/models" and request.method == "GET":
            return Reply(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": m, "object": "model", "created": 1700000000, "owned_by": "emulator"}
                        for m in ("gpt-4o", "gpt-4o-mini", "gpt-5-mini")
                    ],
                },
            )
        if path not in ("/v1/chat/completions", "/v1/embeddings") or request.method != "POST":
            return _error(404, f"Unknown request URL: {request.method} {path}.", code="unknown_url")
        fault = self.next_fault()
        try:
            body = json.loads(request.body)
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "Request body must be a JSON object.")
        if path == "/v1/embeddings":
            reply = self._embeddings(body)
        else:
            try:
                ending = sse_line_ending(request, self.sse_line_ending)
            except ValueError as e:
                return _error(400, str(e))
            reply = self._chat(body)
            if reply.events is not None and ending != "lf":
                reply.events = with_line_endings(reply.events, ending)
        reply.fault = fault
        reply.headers.update(
            {
                "x-request-id": f"req_emu_{next(_ids)}",
                "openai-processing-ms": "1",
                "x-ratelimit-remaining-requests": "9999",
            }
        )
        return reply

    def _chat(self, body: dict[str, Any]) -> Reply:
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array", param="messages")
        invalid = _invalid_chat_field(body)
        if invalid is not None:
            return _error(400, invalid[1], param=invalid[0])
        if body.get("n", 1) != 1:
            return Reply(200, self._completion(model, ["n>1 is not emulated"], None, 1, 1, "stop"))
        prompt = 0
        last_user = ""
        for msg in messages:
            if not isinstance(msg, dict) or "role" not in msg:
                return _error(400, "Each message must be an object with a role.", param="messages")
            text = text_of(msg.get("content"))
            prompt += count_tokens(text) + 3
            if msg["role"] == "user":
                last_user = text
        tools = [
            t["function"]
            for t in body.get("tools") or []
            if isinstance(t, dict) and isinstance(t.get("function"), dict)
        ]
        choice = body.get("tool_choice", "auto")
        forced = choice["function"]["name"] if isinstance(choice, dict) else None
        tool = None
        if choice != "none" and messages[-1].get("role") == "user":
            tool = chosen_tool(tools, forced, last_user, choice == "required")
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = reply_words(last_user, self.reply_text)
        finish = "stop"
        if tool is not None:
            words, finish = [], "tool_calls"
        elif isinstance(limit, int) and len(words) > limit:
            words, finish = words[:limit], "length"
        call: dict[str, Any] | None = None
        if tool is not None:
            call = {
                "id": f"call_emu_{next(_ids)}",
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "arguments": json.dumps(arguments_for(tool.get("parameters"))),
                },
            }
        completion = len(words) + (count_tokens(call["function"]["arguments"]) + 2 if call else 0)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return Reply(
                200,
                events=self._stream(model, words, call, prompt, completion, finish, include_usage),
            )
        return Reply(200, self._completion(model, words, call, prompt, completion, finish))

    def _embeddings(self, body: dict[str, Any]) -> Reply:
        """One vector per input, derived from its text; ``usage.prompt_tokens`` is the
        emulator's count: a word per token for text, one per token id."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", param="model")
        inputs = _embedding_inputs(body.get("input"))
        if inputs is None:
            return _error(
                400,
                "'input' must be a non-empty string, an array of up to 2048 non-empty strings, "
                "an array of token ids, or an array of such arrays.",
                param="input",
            )
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return _error(
                400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format"
            )
        dimensions = body.get("dimensions", 3072 if model.endswith("-large") else 1536)
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            return _error(400, "'dimensions' must be a positive integer.", param="dimensions")
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            tokens += count_tokens(item) if isinstance(item, str) else len(item)
            vector = _vector(json.dumps(item), dimensions)
            if fmt == "base64":
                packed = struct.pack(f"<{dimensions}f", *vector)
                embedding: Any = base64.b64encode(packed).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        return Reply(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    def _usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {
                "cached_tokens": min(self.cached_tokens, prompt),
                "audio_tokens": 0,
            },
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _completion(
        self,
        model: str,
        words: list[str],
        call: dict | None,
        prompt: int,
        completion: int,
        finish: str,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(words) or None,
            "refusal": None,
        }
        if call:
            message["tool_calls"] = [call]
        return {
            "id": f"chatcmpl-emu{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_emu",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": self._usage(prompt, completion),
        }

    def _stream(
        self,
        model: str,
        words: list[str],
        call: dict | None,
        prompt: int,
        completion: int,
        finish: str,
        include_usage: bool,
    ):
        base = {
            "id": f"chatcmpl-emu{next(_ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_emu",
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    **extra,
                }
            )

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for word in words:
            yield chunk({"content": word})
        if call:
            args = call["function"]["arguments"]
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for i in range(0, len(args), 8):
                yield chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 8]}}]}
                )
        yield chunk({}, finish)
        if include_usage:
            yield sse({**base, "choices": [], "usage": self._usage(prompt, completion)})
        yield sse("[DONE]")


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


def _embedding_inputs(value: Any) -> list[str | list[int]] | None:
    """The inputs of an embeddings request, one per vector, or None when OpenAI refuses it."""
    if isinstance(value, str):
        return [value] if value else None
    if _is_token_ids(value):
        return [value]
    if not isinstance(value, list) or not value or len(value) > 2048:
        return None
    if all(isinstance(v, str) and v for v in value) or all(_is_token_ids(v) for v in value):
        return value
    return None


def _vector(text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``text``."""
    seed = hashlib.sha256(text.encode()).digest()
    raw = [seed[i % len(seed)] - 127.5 + i % 7 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
