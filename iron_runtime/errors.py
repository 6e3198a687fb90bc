"""Errors the router answers itself, in the JSON shape of the API the client called.

OpenAI clients get ``{"error": {"message", "type", "param", "code"}}``; Anthropic clients get
``{"type": "error", "error": {"type", "message"}}``. Both official SDKs map the HTTP status
to their exception classes (401 → ``AuthenticationError`` and so on) and show the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from .money import usd


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


# -- budget --------------------------------------------------------------------------------


class BudgetExceeded(RouterError):
    """402: nothing is left (``spent + reserved >= limit``)."""

    def __init__(self, spent: int, reserved: int, limit: int) -> None:
        super().__init__(
            402,
            "iron_cage_budget_exceeded",
            "budget_exceeded",
            f"Iron Cage budget limit exceeded. Spent: {usd(spent)}, Reserved: {usd(reserved)}, "
            f"Limit: {usd(limit)}. Increase the budget with router.set_budget() or wait for "
            "in-flight requests to complete.",
        )


class InsufficientBudget(RouterError):
    """402: this request's worst case does not fit in what is left."""

    def __init__(self, available: int, estimate: int, detail: str) -> None:
        super().__init__(
            402,
            "iron_cage_insufficient_budget",
            "insufficient_budget",
            f"Iron Cage insufficient budget for request. Available: {usd(available)}, "
            f"Estimated max cost: {usd(estimate)} ({detail}). Reduce max_tokens, shorten the "
            "prompt, or increase the budget with router.set_budget().",
        )


def unpriced_model(model: str) -> RouterError:
    return RouterError(
        402,
        "iron_cage_unpriced_model",
        "unpriced_model",
        f"Model {model!r} has no price, so its cost cannot be kept within the budget. Add it "
        "to a price file (LiteLLM's model_prices_and_context_window.json format: "
        '{"%s": {"input_cost_per_token": ..., "output_cost_per_token": ..., '
        '"max_output_tokens": ...}}) and pass it as pricing= (or --set iron_pricing=FILE).' % model,
    )


def model_less_unpriced() -> RouterError:
    return RouterError(
        402,
        "iron_cage_unpriced_model",
        "unpriced_model",
        "This request names no model in a JSON body, so its cost cannot be kept within "
        "the budget; the router refuses it while a budget is set (batches, for example, "
        "are not priced).",
    )


def unmetered(path: str) -> RouterError:
    return RouterError(
        402,
        "iron_cage_unpriced_model",
        "unpriced_model",
        f"{path} is billed in a way the router cannot meter (batches run later, the Realtime "
        "API is a WebSocket, fine-tuning is billed by training tokens), so it is refused while "
        "a budget is set. Run it without a budget, or through another key.",
    )


class LeaseError(RouterError):
    """503: no budget lease from the control server (yet)."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "iron_cage_budget_unavailable", "budget_unavailable", message)


def budget_unavailable(reason: str | None) -> RouterError:
    return LeaseError(
        f"No budget lease from the Iron Cage server yet: {reason} The router keeps retrying."
    )


def method_not_allowed(message: str) -> RouterError:
    return RouterError(405, "invalid_request_error", "method_not_allowed", message)


# -- failures recorded in analytics, never answered as such ------------------------------------


def connection_failed(message: str) -> RouterError:
    """The connection to the client or the provider broke before the answer was complete
    (mitmproxy's own error page, if any, is what the client saw)."""
    return RouterError(502, "iron_cage_upstream_error", "connection_error", message)


def stream_broken(message: str) -> RouterError:
    """A translated stream ended with an error event (sent to the client in the stream)."""
    return RouterError(502, "iron_cage_upstream_error", "stream_error", message)


# -- the catalogue -------------------------------------------------------------------------

# Every (status, type, code) the router answers itself, for the README's table and its test.
# Errors written by the HTTP layer before a request exists (``protocol_error``) are included.
CATALOGUE: frozenset[tuple[int, str, str]] = frozenset(
    {
        (401, "authentication_error", "invalid_api_key"),
        (400, "invalid_request_error", "invalid_request"),
        (400, "invalid_request_error", "unsupported_endpoint"),
        (402, "iron_cage_budget_exceeded", "budget_exceeded"),
        (402, "iron_cage_insufficient_budget", "insufficient_budget"),
        (402, "iron_cage_unpriced_model", "unpriced_model"),
        (403, "iron_cage_key_unavailable", "key_unavailable"),
        (404, "invalid_request_error", "not_found"),
        (405, "invalid_request_error", "method_not_allowed"),
        (400, "invalid_request_error", "malformed_request"),
        (408, "invalid_request_error", "request_timeout"),
        (413, "invalid_request_error", "request_too_large"),
        (431, "invalid_request_error", "request_too_large"),
        (500, "iron_cage_internal_error", "internal_error"),
        (502, "iron_cage_upstream_error", "upstream_error"),
        (503, "iron_cage_key_unavailable", "key_unavailable"),
        (503, "iron_cage_budget_unavailable", "budget_unavailable"),
    }
)


def protocol_error(status: int, message: str) -> tuple[str, str, str]:
    """(type, code, text) of an error page the HTTP layer writes itself: malformed HTTP,
    limits, an unreachable provider. Its body is ``universal_error_body``."""
    if status >= 500:
        return (
            "iron_cage_upstream_error",
            "upstream_error",
            f"The router could not get an answer from the provider: {message}",
        )
    if status == 413:
        return "invalid_request_error", "request_too_large", f"Request body too large: {message}"
    if status == 431:
        return (
            "invalid_request_error",
            "request_too_large",
            f"Request header fields too large: {message}",
        )
    if status == 405:
        return "invalid_request_error", "method_not_allowed", message
    if status == 408:
        return "invalid_request_error", "request_timeout", f"Request timeout: {message}"
    return "invalid_request_error", "malformed_request", f"Malformed request: {message}"
