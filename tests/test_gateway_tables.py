"""The gateway's field tables: what is translated comes from the request model, and every
OpenAI field is in at most one table."""

from __future__ import annotations

from iron_runtime.gateway import tables
from iron_runtime.gateway.openai_models import ChatRequest


def test_translated_fields_are_the_request_models_fields():
    assert tables.TRANSLATED_FIELDS == frozenset(ChatRequest.model_fields)
    # the list as it was written by hand before it was derived: the model has not drifted
    assert tables.TRANSLATED_FIELDS == frozenset(
        {
            "model",
            "messages",
            "max_tokens",
            "max_completion_tokens",
            "temperature",
            "top_p",
            "stop",
            "stream",
            "stream_options",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "user",
            "response_format",
            "n",
        }
    )


def test_a_field_is_translated_dropped_or_refused_not_two_of_them():
    translated, dropped = tables.TRANSLATED_FIELDS, tables.DROPPED_FIELDS
    refused = frozenset(tables.REFUSED_FIELDS)
    assert not translated & dropped
    assert not translated & refused
    assert not dropped & refused
