"""Unit tests of the gateway translation, table row by table row, and a property test:
any valid OpenAI request translates into a request the strict Anthropic emulator accepts."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iron_runtime.errors import RouterError
from iron_runtime.gateway import GatewayStream, tables, translate_error, translate_request
from iron_runtime.gateway.response import finish_reason, translate_response
from iron_runtime.testing.anthropic_emulator import Invalid, validate


def tr(**kw):
    kw.setdefault("model", "claude-x")
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return translate_request(kw, lambda m: 1234)


# -- tables, row by row ----------------------------------------------------------------------


@pytest.mark.parametrize("stop_reason, expected", sorted(tables.FINISH_REASONS.items()))
def test_finish_reason_rows(stop_reason, expected):
    assert finish_reason(stop_reason) == expected
    message = {"content": [], "stop_reason": stop_reason, "usage": {}}
    assert translate_response(message, "m")["choices"][0]["finish_reason"] == expected


def test_finish_reason_unknown_and_missing():
    assert finish_reason("something_new") == "stop"
    assert finish_reason(None) == "stop"


@pytest.mark.parametrize("choice, expected", sorted(tables.TOOL_CHOICES.items()))
def test_tool_choice_rows(choice, expected):
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert tr(tools=tools, tool_choice=choice).body["tool_choice"] == expected


@pytest.mark.parametrize("anthropic_type, expected", sorted(tables.ERROR_TYPES.items()))
def test_error_type_rows(anthropic_type, expected):
    body = json.dumps({"type": "error", "error": {"type": anthropic_type, "message": "m"}})
    err = translate_error(400, body.encode())["error"]
    assert (err["type"], err["code"]) == expected
    assert err["message"] == "m"


def test_error_that_is_not_json():
    err = translate_error(502, b"<html>bad gateway</html>")["error"]
    assert err["type"] == "server_error" and "502" in err["message"]


@pytest.mark.parametrize("field", sorted(tables.REFUSED_FIELDS))
def test_refused_field_rows(field):
    with pytest.raises(RouterError) as e:
        tr(**{field: True if field != "top_logprobs" else 3})
    assert e.value.status == 400 and e.value.param == field


@pytest.mark.parametrize("field", sorted(tables.DROPPED_FIELDS))
def test_dropped_field_rows(field):
    t = tr(**{field: 1})
    assert field not in t.body and field in t.dropped


def test_n_above_one_is_refused_and_n_one_accepted():
    with pytest.raises(RouterError):
        tr(n=2)
    assert "n" not in tr(n=1).body


# -- request details -------------------------------------------------------------------------


def test_max_tokens_order():
    assert tr(max_tokens=10).body["max_tokens"] == 10
    assert tr(max_completion_tokens=20, max_tokens=10).body["max_tokens"] == 20
    assert tr().body["max_tokens"] == 1234
    unknown = translate_request(
        {"model": "claude-x", "messages": [{"role": "user", "content": "x"}]}
    )
    assert unknown.body["max_tokens"] == tables.FALLBACK_MAX_TOKENS


def test_conversation_must_start_with_user():
    with pytest.raises(RouterError, match="start with a user message"):
        tr(messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(RouterError, match="at least one user message"):
        tr(messages=[{"role": "system", "content": "only a system prompt"}])


def test_prefill_loses_trailing_whitespace():
    t = tr(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure, "}])
    assert t.body["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Sure,"}],
    }
    validate(t.body)


def test_tool_results_go_before_user_text_in_a_merged_turn():
    t = tr(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "r"},
            {"role": "user", "content": "and then?"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
    )
    last = t.body["messages"][-1]["content"]
    assert [b["type"] for b in last] == ["tool_result", "text"]
    assert t.body["messages"][1]["content"][0]["input"] == {}
    validate(t.body)


@pytest.mark.parametrize(
    "url", ["ftp://x/y.png", "data:image/tiff;base64,AAAA", "data:image/png,notbase64"]
)
def test_bad_images_are_refused(url):
    with pytest.raises(RouterError):
        tr(
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        )


def test_pdf_file_becomes_a_document():
    t = tr(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}
                ],
            }
        ]
    )
    assert t.body["messages"][0]["content"][0]["type"] == "document"


def test_named_tool_choice_must_exist():
    with pytest.raises(RouterError, match="not in 'tools'"):
        tr(
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice={"type": "function", "function": {"name": "g"}},
        )


def test_include_usage_and_stream_flags():
    t = tr(stream=True, stream_options={"include_usage": True})
    assert t.stream and t.include_usage and t.body["stream"] is True
    assert "stream_options" not in t.body


# -- stream translator -----------------------------------------------------------------------


def _events(*events):
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "model": "claude-x",
        "usage": {"input_tokens": 5, "output_tokens": 1},
    },
}


def _chunks(raw: bytes):
    out = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_stream_translator_fed_one_byte_at_a_time():
    raw = _events(
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "héllo"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": " 1}"},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    )
    gs = GatewayStream("claude-x", include_usage=True)
    out = b"".join(gs.feed(raw[i : i + 1]) for i in range(len(raw))) + gs.feed(b"")
    chunks = _chunks(out)
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "héllo"}
    first_tool = chunks[2]["choices"][0]["delta"]["tool_calls"][0]
    assert (first_tool["index"], first_tool["id"], first_tool["function"]["name"]) == (0, "t1", "f")
    args = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[2:5]
    )
    assert json.loads(args) == {"a": 1}
    assert chunks[5]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[6]["choices"] == [] and chunks[6]["usage"]["completion_tokens"] == 9
    assert gs.complete


def test_stream_ending_early_or_broken_gives_an_error_event():
    gs = GatewayStream("m", False)
    out = gs.feed(_events(START)) + gs.feed(b"")
    assert "error" in _chunks(out)[-1] and not gs.complete
    gs = GatewayStream("m", False)
    out = gs.feed(b"event: message_start\ndata: {not json}\n\n")
    assert "Malformed" in _chunks(out)[-1]["error"]["message"]
    assert gs.feed(b"more") == b""  # nothing after the error


def test_stream_memory_is_bounded():
    from iron_runtime.sse import SSEParser

    gs = GatewayStream("m", False)
    gs.parser = SSEParser(max_event_bytes=1000)
    out = gs.feed(b"data: " + b"x" * 5000)
    assert "error" in _chunks(out)[-1]


# -- property: valid OpenAI conversations always translate into valid Anthropic requests ------

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
solid_text = text.filter(lambda s: s.strip())
TOOLS = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("alpha", "beta_2")
]


@st.composite
def conversations(draw):
    messages = [
        {"role": r, "content": draw(text)}
        for r in draw(st.lists(st.sampled_from(["system", "developer"]), max_size=2))
    ]
    messages.append({"role": "user", "content": draw(solid_text)})
    call_ids = iter(f"call_{i}" for i in range(1000))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["user", "assistant", "tools", "system", "parts"]))
        if kind in ("user", "system"):
            messages.append({"role": kind, "content": draw(text)})
        elif kind == "parts":
            messages.append(
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": draw(text)},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": draw(
                                    st.sampled_from(
                                        [
                                            "https://example.com/a.png",
                                            "data:image/webp;base64,UklGRg==",
                                        ]
                                    )
                                )
                            },
                        },
                    ],
                }
            )
        elif kind == "assistant":
            messages.append({"role": "assistant", "content": draw(st.none() | text)})
        else:
            ids = [next(call_ids) for _ in range(draw(st.integers(1, 3)))]
            messages.append(
                {
                    "role": "assistant",
                    "content": draw(st.none() | text),
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {
                                "name": draw(st.sampled_from(["alpha", "beta_2"])),
                                "arguments": json.dumps(
                                    draw(
                                        st.dictionaries(
                                            st.text(max_size=5), st.integers(), max_size=2
                                        )
                                    )
                                ),
                            },
                        }
                        for i in ids
                    ],
                }
            )
            for i in ids:
                messages.append({"role": "tool", "tool_call_id": i, "content": draw(text)})
    request = {"model": "claude-sonnet-4-6", "messages": messages}
    if draw(st.booleans()):
        request["tools"] = TOOLS
        request["tool_choice"] = draw(
            st.sampled_from(
                ["auto", "required", "none", {"type": "function", "function": {"name": "alpha"}}]
            )
        )
        request["parallel_tool_calls"] = draw(st.booleans())
    if draw(st.booleans()):
        request["stop"] = draw(st.lists(text, max_size=3))
    if draw(st.booleans()):
        request["temperature"] = draw(st.floats(0, 2))
    if draw(st.booleans()):
        request["max_tokens"] = draw(st.integers(1, 100_000))
    if draw(st.booleans()):
        request["response_format"] = {"type": "json_object"}
    if draw(st.booleans()):
        request["user"] = draw(text)
    return request


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_valid_openai_requests_translate_into_requests_anthropic_accepts(request):
    if any(m.get("tool_calls") for m in request["messages"]) and "tools" not in request:
        request["tools"] = TOOLS
    translation = translate_request(request, lambda m: 64_000)
    try:
        validate(translation.body)
    except Invalid as e:  # pragma: no cover - shows the failing pair
        pytest.fail(
            f"{e}\nOpenAI: {json.dumps(request)}\nAnthropic: {json.dumps(translation.body)}"
        )


def test_tool_ids_are_mapped_deterministically_and_never_collide():
    from iron_runtime.gateway.request import anthropic_tool_id

    assert anthropic_tool_id("toolu_01Abc-_9") == "toolu_01Abc-_9"
    ids = ["a.b", "a:b", "a b", "a/b", "", "é", "a.b:0", "a.b:1", "functions.f:0"]
    mapped = [anthropic_tool_id(i) for i in ids]
    assert len(set(mapped)) == len(ids)
    assert mapped == [anthropic_tool_id(i) for i in ids]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", m) and len(m) <= 64 for m in mapped)
    assert anthropic_tool_id("x" * 500 + ".") != anthropic_tool_id("x" * 501 + ".")
    # a valid id shaped like a mapped one never collides with the id it looks like
    for foreign in ("a.b", "functions.get_weather:0", ""):
        lookalike = anthropic_tool_id(foreign)
        assert anthropic_tool_id(lookalike) != lookalike
        assert anthropic_tool_id(lookalike) != anthropic_tool_id(foreign)
