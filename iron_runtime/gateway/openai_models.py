"""The parts of an OpenAI ``chat.completions`` request the gateway reads, as pydantic models,
so that a malformed request fails at the edge with a message naming the field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionCall(_Loose):
    name: str
    arguments: str = ""


class ToolCall(_Loose):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Loose):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Loose):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Loose):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Loose):
    name: str


class NamedToolChoice(_Loose):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Loose):
    include_usage: bool | None = None


class ResponseFormat(_Loose):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatRequest(_Loose):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "required", "none"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    n: int | None = Field(default=None, ge=1)


def describe(error: ValidationError) -> tuple[str, str | None]:
    """A one-line message and the ``param`` path of a validation error."""
    first = error.errors()[0]
    # drop pydantic's union-branch names (e.g. "str", "list[...]") from the location
    path = ".".join(
        str(p)
        for p in first["loc"]
        if isinstance(p, int) or ("[" not in p and p not in ("str", "int"))
    )
    more = f" (and {len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{path}: {first['msg']}{more}", path or None
