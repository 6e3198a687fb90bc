"""What the emulated models answer: deterministic text, token counts and tool calls.

Both emulators answer the same way so that tests can compare providers: the reply is
``reply_text`` (by default an echo of the last user text), one word per streamed chunk, and
one token per word. A tool is called when the request forces one (``tool_choice``) or when
the last user message names one of the offered tools.
"""

from __future__ import annotations

from typing import Any


def count_tokens(text: str) -> int:
    return len(text.split())


def text_of(content: Any) -> str:
    """Plain text of a message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif "content" in part:
                    out.append(text_of(part["content"]))
        return " ".join(out)
    return ""


def reply_words(last_user_text: str, reply_text: str | None) -> list[str]:
    text = reply_text if reply_text is not None else f"Echo: {last_user_text}".strip()
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def arguments_for(schema: Any) -> dict[str, Any]:
    """Arguments that satisfy a simple JSON schema's required properties."""
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties") or {}
    out: dict[str, Any] = {}
    for name in schema.get("required") or list(props)[:1]:
        kind = (props.get(name) or {}).get("type", "string")
        out[name] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(
            kind, "Paris"
        )
    return out


def chosen_tool(
    tools: list[dict[str, Any]], forced: str | None, last_user_text: str, any_tool: bool
) -> dict[str, Any] | None:
    """The tool (name, schema) to call, or None to answer with text."""
    if not tools:
        return None
    if forced:
        return next((t for t in tools if t["name"] == forced), None)
    if any_tool:
        return tools[0]
    for tool in tools:
        if tool["name"] in last_user_text:
            return tool
    return None
