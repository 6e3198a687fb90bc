"""Every mapping of the gateway, in one screen.

OpenAI ``chat.completions`` on one side, Anthropic ``messages`` on the other. Each table is
tested row by row (``tests/test_gateway_translate.py``) and shown in the README.
"""

from __future__ import annotations

from .openai_models import ChatRequest

# Anthropic stop_reason → OpenAI finish_reason. A tool call cut off by max_tokens is
# "length" (the arguments are incomplete), as is a text answer cut off.
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
DEFAULT_FINISH_REASON = "stop"

# OpenAI tool_choice (string form) → Anthropic tool_choice. The object form
# {"type": "function", "function": {"name": X}} becomes {"type": "tool", "name": X}.
TOOL_CHOICES: dict[str, dict[str, str]] = {
    "auto": {"type": "auto"},
    "required": {"type": "any"},
    "none": {"type": "none"},
}

# Anthropic error type → (OpenAI error type, OpenAI error code), status kept as it is.
ERROR_TYPES: dict[str, tuple[str, str]] = {
    "invalid_request_error": ("invalid_request_error", "invalid_request_error"),
    "authentication_error": ("authentication_error", "invalid_api_key"),
    "permission_error": ("permission_error", "permission_denied"),
    "not_found_error": ("not_found_error", "model_not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit_error": ("rate_limit_error", "rate_limit_exceeded"),
    "billing_error": ("insufficient_quota", "insufficient_quota"),
    "timeout_error": ("server_error", "timeout"),
    "api_error": ("server_error", "server_error"),
    "overloaded_error": ("server_error", "overloaded"),
}
DEFAULT_ERROR_TYPE = ("server_error", "upstream_error")

# OpenAI request fields passed through after their own translation (see request.py): the
# fields of the request model, which is what the translation reads.
TRANSLATED_FIELDS = frozenset(ChatRequest.model_fields)

# Fields with no Anthropic equivalent that change nothing a client relies on: dropped
# (the flow's metadata lists what was dropped, so mitmweb shows it).
DROPPED_FIELDS = frozenset(
    {
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "seed",
        "store",
        "metadata",
        "service_tier",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
        "modalities",
    }
)

# Fields whose meaning cannot be honoured: refused with 400 rather than silently ignored.
REFUSED_FIELDS: dict[str, str] = {
    "logprobs": "log probabilities are not available from Claude models",
    "top_logprobs": "log probabilities are not available from Claude models",
    "audio": "audio output is not available from Claude models",
    "functions": "the legacy 'functions' parameter is not supported; use 'tools'",
    "function_call": "the legacy 'function_call' parameter is not supported; use 'tool_choice'",
    "web_search_options": "web search options are not supported through the gateway",
}

# image_url media types Anthropic accepts in base64 image sources.
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# max_tokens when the client gives none and the model is not in the price table: small
# enough for every Claude model still served.
FALLBACK_MAX_TOKENS = 4096

# Anthropic's temperature range (OpenAI's is 0..2): larger values are clamped to 1.
MAX_TEMPERATURE = 1.0
