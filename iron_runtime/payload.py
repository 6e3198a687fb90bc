"""Reading the client's request body."""

from __future__ import annotations

import json
from typing import Any

from .errors import bad_request


def is_json_content_type(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def parse_json_body(raw: bytes, content_type: str) -> dict[str, Any] | None:
    """The body as a JSON object when the client says it sent JSON (or sent no type).

    Returns None for an empty body or another media type (multipart uploads, say).
    Raises a 400 ``RouterError`` for JSON that does not parse, is not UTF-8, or is not an
    object.
    """
    if not raw:
        return None
    if content_type and not is_json_content_type(content_type):
        return None
    try:
        payload = json.loads(raw)
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
