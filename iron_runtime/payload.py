"""Reading the client's request body, and JSON nested no deeper than the router's limit."""

from __future__ import annotations

import json
from typing import Any

from .errors import RouterError, bad_request

# How deeply arrays and objects may sit inside one another in JSON the router reads (the
# request body, tool-call arguments inside it): the top-level object is level 1. Real JSON
# Schemas and tool arguments stay far below it; past it, Python's parser and any code that
# walks the value recursively would fail (the C parser gives up near 10,000 levels, Python
# code near 1,000). The same limit as serde_json's default.
MAX_JSON_DEPTH = 128

# JSON text up to this size with no more brackets than the limit cannot nest past it.
# Counting them (a C loop, about 0.3 ns a byte per bracket kind) beats walking the parsed
# value for small chat bodies; larger ones with few containers are cheap to walk anyway.
_COUNT_BELOW = 8 * 1024


def too_deep(what: str, param: str | None = None) -> RouterError:
    """The 400 for JSON nested past ``MAX_JSON_DEPTH``; ``what`` names where it was."""
    return bad_request(
        f"{what} has JSON nested deeper than {MAX_JSON_DEPTH} levels (arrays and objects "
        "inside one another), the router's limit: send a flatter structure.",
        param,
    )


def nested_deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON has arrays and objects nested more than ``limit`` levels deep.

    Walks one level at a time with lists, never by recursion; the cost is one look at each
    item of each array and object (about 50 ns), and it stops at the first level past the
    limit.
    """
    if value.__class__ is not dict and value.__class__ is not list:
        return False
    level = [value]
    for _ in range(limit):
        level = [
            item
            for container in level
            for item in (container.values() if container.__class__ is dict else container)
            if item.__class__ is dict or item.__class__ is list
        ]
        if not level:
            return False
    return True


def loads_json(raw: bytes | str, what: str, param: str | None = None) -> Any:
    """``json.loads``, refusing JSON nested deeper than ``MAX_JSON_DEPTH`` with a 400
    ``RouterError`` naming ``what`` and the limit. Other parse errors raise as from
    ``json.loads`` (``ValueError``, ``UnicodeDecodeError``)."""
    try:
        value = json.loads(raw)
    except RecursionError:  # thousands of levels: past the limit by far
        raise too_deep(what, param) from None
    if isinstance(raw, bytes):
        few = len(raw) <= _COUNT_BELOW and raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH
    else:
        few = len(raw) <= _COUNT_BELOW and raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH
    if not few and nested_deeper_than(value):
        raise too_deep(what, param)
    return value


def is_json_content_type(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def parse_json_body(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """The body as a JSON object when the client says it sent JSON (or sent no type).

    Returns None for an empty body or another media type (multipart uploads, say).
    Raises a 400 ``RouterError`` for JSON that does not parse, is not UTF-8, is not an
    object, or is nested deeper than ``MAX_JSON_DEPTH``.
    """
    if not raw:
        return None
    if content_type and not is_json_content_type(content_type):
        return None
    try:
        payload = loads_json(raw, "Request body")
    except UnicodeDecodeError as e:
        raise bad_request(f"Request body is not valid UTF-8 at byte {e.start}.") from None
    except ValueError as e:
        raise bad_request(f"Request body is not valid JSON: {e}.") from None
    if not isinstance(payload, dict):
        raise bad_request(
            f"Request body must be a JSON object, got a JSON {type(payload).__name__}."
        )
    return payload


def model_of(payload: dict[str, Any] | None) -> str | None:
    if payload is None:
        return None
    model = payload.get("model")
    if model is None:
        return None
    if not isinstance(model, str):
        raise bad_request("'model' must be a string.", param="model")
    return model
