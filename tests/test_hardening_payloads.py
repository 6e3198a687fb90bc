"""Hostile payloads: JSON nested too deep is a clear 400 on every path, and SSE streams with
any of the three line endings the spec allows (LF, CRLF, CR) are read by the metering and the
gateway, with no upstream byte silently dropped."""

from __future__ import annotations

import json
import math

import anthropic
import httpx
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iron_runtime.cost import Usage
from iron_runtime.errors import RouterError
from iron_runtime.gateway import GatewayStream, translate_request
from iron_runtime.metering import StreamMeter
from iron_runtime.payload import MAX_JSON_DEPTH, parse_json_body
from iron_runtime.pricing import PriceTable
from iron_runtime.sse import Event, SSEParser
from iron_runtime.tokens import count_request

from .conftest import make_router

LIMIT_TEXT = f"nested deeper than {MAX_JSON_DEPTH} levels"
HI = [{"role": "user", "content": "hi"}]
PRICES = PriceTable.builtin()


@pytest.fixture(scope="module")
def budget_router(openai_emu, anthropic_emu):
    r = make_router(openai_emu, anthropic_emu, budget=10.0)
    yield r
    r.stop()


@pytest.fixture(params=["unlimited", "budget"])
def any_router(request, router, budget_router):
    """Each deep-nesting test runs through a router without a budget and one with (which
    counts the input tokens before forwarding)."""
    return router if request.param == "unlimited" else budget_router


def _oai(r):
    return openai.OpenAI(base_url=r.base_url, api_key=r.api_key, max_retries=0)


def _claude(r):
    return anthropic.Anthropic(base_url=r.base_url, api_key=r.api_key, max_retries=0)


def _spent_micros(r) -> int:
    return r._admin("GET", "status")["budget"]["spent_micros"]


def _cost(model: str, usage: Usage) -> int:
    p = PRICES.lookup(model)
    read = p.input if p.cache_read is None else p.cache_read
    write = p.input if p.cache_write is None else p.cache_write
    total = (
        usage.input * p.input
        + usage.output * p.output
        + usage.cache_read * read
        + usage.cache_write * write
    )
    return math.ceil(total / 1_000_000)


# -- JSON depth: the body parse ---------------------------------------------------------------


def _nested(depth: int, siblings: int = 0) -> bytes:
    """A JSON object whose innermost array sits ``depth`` levels deep, next to ``siblings``
    shallow objects (which make the body large and bracket-rich)."""
    return (
        b'{"model":"gpt-4o","s":['
        + b",".join([b'{"role":"user","content":"hello"}'] * siblings)
        + b'],"x":'
        + b"[" * (depth - 1)
        + b"]" * (depth - 1)
        + b"}"
    )


@pytest.mark.parametrize("siblings", [0, 1_000], ids=["small", "large"])
def test_body_parse_accepts_the_limit_and_refuses_one_more_level(siblings):
    body = _nested(MAX_JSON_DEPTH, siblings)
    assert parse_json_body(body, "application/json")["model"] == "gpt-4o"
    for depth in (MAX_JSON_DEPTH + 1, 1_000, 10_000, 200_000):
        with pytest.raises(RouterError) as err:
            parse_json_body(_nested(depth, siblings), "application/json")
        assert err.value.status == 400 and err.value.type == "invalid_request_error"
        assert LIMIT_TEXT in err.value.message


def test_depth_counts_objects_and_arrays_and_ignores_brackets_in_strings():
    brackets = json.dumps({"model": "m", "text": "[{" * 5_000}).encode()
    assert parse_json_body(brackets, "")["text"].startswith("[{")
    objects = b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1)
    with pytest.raises(RouterError, match=LIMIT_TEXT):
        parse_json_body(objects, "")
    # many containers side by side are not deep
    wide = json.dumps({"model": "m", "messages": [{"role": "user"}] * 5_000}).encode()
    assert len(parse_json_body(wide, "application/json")["messages"]) == 5_000


def test_token_counter_refuses_tool_results_nested_past_the_limit_without_recursing():
    content: object = "leaf"
    for _ in range(500):
        content = [{"type": "tool_result", "tool_use_id": "t", "content": content}]
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": content}]}
    with pytest.raises(RouterError, match=LIMIT_TEXT) as err:
        count_request(body, "claude-haiku-4-5", anthropic=True)
    assert err.value.status == 400
    # within the limit, the text at the bottom is counted
    counts = []
    for leaf in ("", "alpha beta gamma " * 20):
        shallow: object = leaf
        for _ in range(20):
            shallow = [{"type": "tool_result", "tool_use_id": "t", "content": shallow}]
        body["messages"][0]["content"] = shallow
        counts.append(count_request(body, "claude-haiku-4-5", anthropic=True))
    assert counts[1] - counts[0] >= 60


def _tool_call_conversation(arguments: str) -> list[dict]:
    return [
        {"role": "user", "content": "call it"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]


def _deep_arguments(depth: int) -> str:
    return '{"q":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def test_gateway_refuses_tool_arguments_nested_past_the_limit():
    payload = {"model": "claude-sonnet-4-6", "messages": _tool_call_conversation("")}
    payload["messages"][1]["tool_calls"][0]["function"]["arguments"] = _deep_arguments(10_000)
    with pytest.raises(RouterError, match=LIMIT_TEXT) as err:
        translate_request(payload)
    assert err.value.status == 400 and err.value.param == "messages.1.tool_calls"
    payload["messages"][1]["tool_calls"][0]["function"]["arguments"] = _deep_arguments(
        MAX_JSON_DEPTH
    )
    translated = translate_request(payload)
    assert translated.body["messages"][1]["content"][0]["type"] == "tool_use"


# -- JSON depth: end to end, on the three paths -----------------------------------------------


def _post(r, path: str, body: bytes, anthropic_shape: bool = False) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if anthropic_shape:
        headers |= {"x-api-key": r.api_key, "anthropic-version": "2023-06-01"}
    else:
        headers["authorization"] = f"Bearer {r.api_key}"
    return httpx.post(r.base_url + path, headers=headers, content=body, timeout=30)


def test_deep_body_to_openai_is_a_400_naming_the_limit(any_router, openai_emu):
    body = (
        b'{"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}],'
        b'"metadata":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    )
    r = _post(any_router, "/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and LIMIT_TEXT in error["message"]
    assert not openai_emu.requests
    assert _oai(any_router).chat.completions.create(model="gpt-4o", messages=HI).choices


def test_deep_tool_results_to_anthropic_are_a_400_naming_the_limit(any_router, anthropic_emu):
    content = '"leaf"'
    for _ in range(500):
        content = '[{"type":"tool_result","tool_use_id":"toolu_1","content":' + content + "}]"
    body = (
        '{"model":"claude-haiku-4-5","max_tokens":16,"messages":[{"role":"user","content":'
        + content
        + "}]}"
    ).encode()
    r = _post(any_router, "/messages", body, anthropic_shape=True)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert LIMIT_TEXT in r.json()["error"]["message"]
    assert not anthropic_emu.requests
    answer = _claude(any_router).messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=HI
    )
    assert answer.content


def test_gateway_tool_arguments_nested_deep_are_a_400_naming_the_limit(any_router, anthropic_emu):
    oai = _oai(any_router)
    answer = oai.chat.completions.create(  # within the limit: translated as sent
        model="claude-sonnet-4-6",
        max_tokens=16,
        messages=_tool_call_conversation(_deep_arguments(100)),
    )
    assert answer.choices[0].message.content
    sent = anthropic_emu.requests[-1].json()["messages"][1]["content"][0]["input"]
    assert json.dumps(sent, separators=(",", ":")) == _deep_arguments(100)
    anthropic_emu.requests.clear()
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model="claude-sonnet-4-6",
            max_tokens=16,
            messages=_tool_call_conversation(_deep_arguments(10_000)),
        )
    assert LIMIT_TEXT in err.value.message and "arguments" in err.value.message
    assert not anthropic_emu.requests
    assert oai.chat.completions.create(model="claude-sonnet-4-6", max_tokens=16, messages=HI)


# -- SSE line endings: the parser ---------------------------------------------------------------

EVENTS = [
    Event("message_start", '{"type":"message_start"}'),
    Event(None, "first line\nsecond line"),
    Event("ping", ""),
    Event(None, "[DONE]"),
]


def _stream(eols: list[str]) -> bytes:
    """EVENTS framed with a comment and an id line; line i ends with ``eols[i % len]``."""
    lines = [
        ": keep-alive",
        "event: message_start",
        'data: {"type":"message_start"}',
        "",
        "id: 7",
        "data: first line",
        "data:second line",
        "",
        "event: ping",
        "data",
        "",
        "data: [DONE]",
        "",
    ]
    return _join(lines, [eols[i % len(eols)] for i in range(len(lines))])


def _join(lines: list[str], eols: list[str]) -> bytes:
    """Lines with their endings. A CR line ending followed by an empty line ending in LF
    would read as one CRLF, so that empty line ends with CRLF instead."""
    out = []
    for i, line in enumerate(lines):
        eol = eols[i]
        if not line and eol == "\n" and i and eols[i - 1] == "\r":
            eol = "\r\n"
        out.append(line + eol)
        eols[i] = eol
    return "".join(out).encode()


ENDINGS = {
    "lf": ["\n"],
    "crlf": ["\r\n"],
    "cr": ["\r"],
    "mixed": ["\r\n", "\r", "\n", "\r", "\r\n"],
}


def test_parser_reads_lf_crlf_cr_and_mixed_line_endings():
    for name, eols in ENDINGS.items():
        assert SSEParser().feed(_stream(eols)) == EVENTS, name


def test_parser_gives_the_same_events_however_the_stream_is_cut():
    for name, eols in ENDINGS.items():
        raw = _stream(eols)
        for i in range(len(raw) + 1):
            for j in range(i, len(raw) + 1, 7):
                p = SSEParser()
                got = p.feed(raw[:i]) + p.feed(raw[i:j]) + p.feed(raw[j:])
                assert got == EVENTS, (name, i, j)


def test_cr_at_the_end_of_a_chunk_ends_the_line_at_once():
    p = SSEParser()
    assert p.feed(b"data: a\r\r") == [Event(None, "a")]  # no waiting for a possible LF
    assert p.feed(b"\n") == []  # the LF of a CRLF split across chunks: not another line
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\ndata: b\r\n\r\n") == [Event(None, "a\nb")]  # one event, not two


lines = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12).map(
            lambda s: "data: " + s
        ),
        st.sampled_from(["event: delta", ": comment", "id: 3", "data", ""]),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    lines=lines,
    eols=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=31, max_size=31),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=8),
)
def test_property_random_splits_give_the_same_events(lines, eols, cuts):
    raw = _join(lines, eols)
    whole = SSEParser().feed(raw)
    lf = SSEParser().feed("".join(line + "\n" for line in lines).encode())
    assert whole == lf
    p = SSEParser()
    pieces, start = [], 0
    for cut in sorted(c % (len(raw) + 1) for c in cuts) + [len(raw)]:
        pieces += p.feed(raw[start:cut])
        start = cut
    assert pieces == whole


# -- SSE line endings: metering and gateway, in the core ----------------------------------------


def _openai_stream(eol: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": "hello world"}}], "usage": None}
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    events = [f"data: {json.dumps(chunk)}", f"data: {json.dumps(usage)}", "data: [DONE]"]
    return "".join(e + eol + eol for e in events).encode()


def test_meter_reads_every_line_ending_and_strips_its_usage_chunk():
    for eol in ("\r", "\r\n", "\n"):
        raw = _openai_stream(eol)
        for size in (1, 2, 5, len(raw)):
            meter = StreamMeter(anthropic=False, encoding_name="o200k_base", strip_usage_chunk=True)
            out = b"".join(meter.feed(raw[i : i + size]) for i in range(0, len(raw), size))
            out += meter.feed(b"")
            assert b"hello world" in out and b"completion_tokens" not in out, (eol, size)
            assert out.count(b"[DONE]") == 1
            assert meter.meter.charged(input_estimate=1000) == Usage(9, 2, 0, 0)


def test_meter_passes_through_every_byte_it_does_not_remove():
    raw = (
        b": keep-alive comment\n\n"
        b"id: 5\nretry: 100\n\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"caf\xc3\xa9"}}]}\n\n'
        b"data: not json at all\n\n"
        b"data: \xff\xfe invalid utf-8\n\n"
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
        b"data: an event the upstream never finished"
    )
    meter = StreamMeter(anthropic=False, encoding_name="o200k_base", strip_usage_chunk=True)
    out = b"".join(meter.feed(raw[i : i + 3]) for i in range(0, len(raw), 3)) + meter.feed(b"")
    usage_chunk = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    assert out == raw.replace(usage_chunk, b"")


def test_meter_hands_over_what_it_held_when_an_event_is_too_large():
    meter = StreamMeter(anthropic=False, encoding_name="o200k_base", strip_usage_chunk=True)
    meter.parser = SSEParser(max_event_bytes=100)
    first = b'data: {"choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
    huge = b"data: " + b"x" * 500
    out = meter.feed(first + huge[:60]) + meter.feed(huge[60:]) + meter.feed(b"\n\nmore")
    assert out == first + huge + b"\n\nmore"
    assert meter.meter.delivered == 1
    # held up to a CR whose LF comes in the next chunk: handed over as CR, so the client
    # still reads one CRLF, not two line endings
    meter = StreamMeter(anthropic=False, encoding_name="o200k_base", strip_usage_chunk=True)
    meter.parser = SSEParser(max_event_bytes=10)
    raw = [b"data: first part of it\r", b"\ndata: rest\r\n\r\n"]
    assert b"".join(meter.feed(c) for c in raw) + meter.feed(b"") == b"".join(raw)


def _anthropic_stream(eol: str) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello there"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return "".join(
        f"event: {name}{eol}data: {json.dumps(data)}{eol}{eol}" for name, data in events
    ).encode()


def test_gateway_stream_translates_every_line_ending():
    for eol in ("\r", "\r\n", "\n"):
        raw = _anthropic_stream(eol)
        for size in (1, 3, len(raw)):
            gs = GatewayStream("claude-sonnet-4-6", include_usage=False)
            out = b"".join(gs.feed(raw[i : i + size]) for i in range(0, len(raw), size))
            out += gs.feed(b"")
            chunks = [
                json.loads(line[6:]) for line in out.split(b"\n\n") if line.startswith(b"data: {")
            ]
            assert chunks and "error" not in chunks[-1], (eol, size, out[-300:])
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
            assert text == "Hello there" and gs.complete
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            assert out.endswith(b"data: [DONE]\n\n")


def test_gateway_stream_cut_mid_event_says_so():
    gs = GatewayStream("claude-sonnet-4-6", include_usage=False)
    raw = _anthropic_stream("\r")
    out = gs.feed(raw[: len(raw) - 10]) + gs.feed(b"")
    last = json.loads(out.rstrip().rsplit(b"\n\n", 1)[-1][6:])
    assert "ended before the message was complete" in last["error"]["message"]
    assert "unfinished event" in last["error"]["message"]


# -- SSE line endings: end to end through a router --------------------------------------------


def _streamed_text(oai, model: str) -> tuple[str, list]:
    chunks = list(
        oai.chat.completions.create(
            model=model,
            max_tokens=40,
            messages=[{"role": "user", "content": "count these five words please"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_openai_stream_with_cr_endings_is_delivered_and_metered(budget_router, openai_emu):
    oai = _oai(budget_router)
    before = _spent_micros(budget_router)
    expected, _ = _streamed_text(oai, "gpt-4o")  # LF endings: the reference
    lf_cost = _spent_micros(budget_router) - before
    assert expected and lf_cost > 0
    for ending in ("cr", "crlf"):
        openai_emu.sse_line_ending = ending
        before = _spent_micros(budget_router)
        text, chunks = _streamed_text(oai, "gpt-4o")
        assert text == expected, ending
        assert all(c.usage is None for c in chunks)  # the router's usage chunk is removed
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert _spent_micros(budget_router) - before == lf_cost  # from the reported usage
        assert budget_router.total_spent() > 0
        assert budget_router._admin("GET", "status")["budget"]["reserved_micros"] == 0


@pytest.mark.parametrize("budgeted", [False, True], ids=["unlimited", "budget"])
def test_gateway_stream_with_cr_endings_reaches_the_openai_sdk(
    router, budget_router, anthropic_emu, budgeted
):
    r = budget_router if budgeted else router
    oai = _oai(r)
    before = _spent_micros(r)
    expected, _ = _streamed_text(oai, "claude-sonnet-4-6")  # LF endings: the reference
    lf_cost = _spent_micros(r) - before
    assert expected and lf_cost > 0
    for ending in ("cr", "crlf"):
        anthropic_emu.sse_line_ending = ending
        before = _spent_micros(r)
        text, chunks = _streamed_text(oai, "claude-sonnet-4-6")
        assert text == expected, ending
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert _spent_micros(r) - before == lf_cost
        assert r.total_spent() > 0


def test_anthropic_stream_with_cr_endings_is_priced_from_its_usage(budget_router, anthropic_emu):
    claude = _claude(budget_router)
    anthropic_emu.sse_line_ending = "cr"
    before = _spent_micros(budget_router)
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "alpha beta gamma delta"}],
    ) as s:
        final = s.get_final_message()
    assert final.content[0].text
    usage = Usage(final.usage.input_tokens, final.usage.output_tokens)
    assert _spent_micros(budget_router) - before == _cost("claude-haiku-4-5", usage)
