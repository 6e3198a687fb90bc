"""Errors the router answers itself, in the JSON shape of the API the client called.

OpenAI clients get ``{"error": {"message", "type", "param", "code"}}``; Anthropic clients get
``{"type": "error", "error": {"type", "message"}}``. Both official SDKs map the HTTP status
to their exception classes (401 → ``AuthenticationError`` and so on) and show the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum


class ApiShape(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


@dataclass(slots=True)
class RouterError(Exception):
    """A request the router answers locally with an error."""

    status: int
    type: str
    code: str
    message: str
    param: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def body(self, shape: ApiShape) -> bytes:
        type_ = self.type
        if shape is ApiShape.ANTHROPIC:
            type_ = anthropic_type_for(self.status, self.type)
        return error_body(shape, type_, self.code, self.message, self.param)


# Anthropic's error types by status, for errors we raise with an OpenAI-style type.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}


def error_body(
    shape: ApiShape, type_: str, code: str, message: str, param: str | None = None
) -> bytes:
    if shape is ApiShape.ANTHROPIC:
        payload: dict = {"type": "error", "error": {"type": type_, "message": message}}
    else:
        payload = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json.dumps(payload).encode()


def anthropic_type_for(status: int, type_: str) -> str:
    """The Anthropic error type to show for one of our errors (iron_cage_* types are kept)."""
    if type_.startswith("iron_cage_"):
        return type_
    return _ANTHROPIC_TYPES.get(status, "api_error")


def bad_token() -> RouterError:
    return RouterError(
        401,
        "authentication_error",
        "invalid_api_key",
        "Invalid API key: present the router's token (router.api_key) as "
        "'Authorization: Bearer <token>' or 'x-api-key: <token>'.",
    )


def bad_request(message: str, param: str | None = None) -> RouterError:
    return RouterError(400, "invalid_request_error", "invalid_request", message, param)


def too_large(size: int, limit: int) -> RouterError:
    return RouterError(
        413,
        "invalid_request_error",
        "request_too_large",
        f"Request body is {size} bytes, over the router's limit of {limit} bytes "
        f"(raise it with body_limit= or --set iron_body_limit=...).",
    )


def key_unavailable(status: int, message: str) -> RouterError:
    return RouterError(status, "iron_cage_key_unavailable", "key_unavailable", message)


def upstream_error(status: int, message: str) -> RouterError:
    return RouterError(status, "iron_cage_upstream_error", "upstream_error", message)


def internal_error(message: str) -> RouterError:
    return RouterError(500, "iron_cage_internal_error", "internal_error", message)


def not_found(message: str) -> RouterError:
    return RouterError(404, "invalid_request_error", "not_found", message)


def no_such_api_at_anthropic(api: str, method: str, path: str, model: str) -> RouterError:
    """An OpenAI-only endpoint called with a Claude model: Anthropic would answer a bare 404."""
    hint = ""
    if api == "the Responses API":
        hint = (
            " With openai-agents, use OpenAIChatCompletionsModel (or "
            "set_default_openai_api('chat_completions'))."
        )
    return RouterError(
        400,
        "invalid_request_error",
        "unsupported_endpoint",
        f"{method} {path} is {api}, which only OpenAI offers; model {model!r} is an "
        "Anthropic model. The router translates OpenAI's /v1/chat/completions for Claude "
        f"models: call that instead, or Anthropic's /v1/messages.{hint}",
    )


def universal_error_body(status: int, type_: str, message: str, code: str | None = None) -> bytes:
    """A body both SDKs parse, for errors raised where the caller's API is not known."""
    payload = {
        "type": "error",
        "error": {"type": type_, "message": message, "param": None, "code": code or type_},
    }
    return json.dumps(payload).encode()
