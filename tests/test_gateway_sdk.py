"""The OpenAI SDK calls Claude models through the router's gateway, as if Anthropic spoke
the OpenAI API. The Anthropic emulator is strict, so a translation bug fails these tests."""

from __future__ import annotations

import base64
import json
import re

import httpx
import openai
import pytest

from iron_runtime.testing import Fault

MODEL = "claude-sonnet-4-6"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def user(text):
    return [{"role": "user", "content": text}]


def sent(anthropic_emu):
    return anthropic_emu.requests[-1].json()


def collect(stream):
    """Run a stream through the SDK's own accumulator, as agents' frameworks do."""
    from openai.lib.streaming.chat import ChatCompletionStreamState

    state = ChatCompletionStreamState()
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        state.handle_chunk(chunk)
    return chunks, state.get_final_completion()


# -- text ------------------------------------------------------------------------------------


def test_text_only(oai, anthropic_emu):
    reply = oai.chat.completions.create(model=MODEL, messages=user("hello claude"))
    choice = reply.choices[0]
    assert choice.message.content == "Echo: hello claude"
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert reply.object == "chat.completion"
    body = sent(anthropic_emu)
    assert anthropic_emu.requests[-1].path == "/v1/messages"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hello claude"}]}
    ]


def test_text_only_streamed(oai):
    chunks, final = collect(
        oai.chat.completions.create(
            model=MODEL, messages=user("hello streamed claude"), stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert final.choices[0].message.content == "Echo: hello streamed claude"
    assert final.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked


def test_thinking_is_not_leaked_into_content(oai, anthropic_emu):
    blocks = [
        {"type": "thinking", "thinking": "secret chain of thought"},
        {"type": "text", "text": "The answer is 4."},
    ]
    anthropic_emu.script(blocks)
    reply = oai.chat.completions.create(model=MODEL, messages=user("2+2?"))
    assert reply.choices[0].message.content == "The answer is 4."
    anthropic_emu.script(blocks)
    _, final = collect(oai.chat.completions.create(model=MODEL, messages=user("2+2?"), stream=True))
    assert final.choices[0].message.content == "The answer is 4."


# -- tools -----------------------------------------------------------------------------------

TOOL_CASES = {
    "tool only": (
        [{"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}}],
        None,
        None,
        [("get_weather", {"city": "Paris"})],
        "tool_calls",
    ),
    "text then tool": (
        [
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        None,
        "Let me check.",
        [("get_weather", {"city": "Oslo"})],
        "tool_calls",
    ),
    "several tools": (
        [
            {"type": "tool_use", "name": "get_weather", "input": {"city": "Rome"}},
            {"type": "tool_use", "name": "get_time", "input": {}},
            {"type": "tool_use", "name": "get_weather", "input": {"city": "Lima"}},
        ],
        None,
        None,
        [("get_weather", {"city": "Rome"}), ("get_time", {}), ("get_weather", {"city": "Lima"})],
        "tool_calls",
    ),
    "empty arguments": (
        [{"type": "tool_use", "name": "get_time", "input": {}}],
        None,
        None,
        [("get_time", {})],
        "tool_calls",
    ),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_tool_calls(oai, anthropic_emu, case, stream):
    blocks, _, text, calls, finish = TOOL_CASES[case]
    anthropic_emu.script(blocks)
    kw = dict(model=MODEL, messages=user("what is the weather?"), tools=[WEATHER, TIME])
    if stream:
        chunks, reply = collect(oai.chat.completions.create(stream=True, **kw))
        indexes = [
            tc.index for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []
        ]
        assert sorted(set(indexes)) == list(range(len(calls)))
    else:
        reply = oai.chat.completions.create(**kw)
    msg = reply.choices[0].message
    assert reply.choices[0].finish_reason == finish
    assert (msg.content or None) == text
    got = [(tc.function.name, json.loads(tc.function.arguments)) for tc in msg.tool_calls]
    assert got == calls
    assert len({tc.id for tc in msg.tool_calls}) == len(calls)
    assert all(tc.id.startswith("toolu_") for tc in msg.tool_calls)
    assert sent(anthropic_emu)["tools"][0] == {
        "name": "get_weather",
        "description": "Weather in a city",
        "input_schema": WEATHER["function"]["parameters"],
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tool_call_cut_by_max_tokens_is_length(oai, anthropic_emu, stream):
    anthropic_emu.script(
        [
            {
                "type": "tool_use",
                "name": "get_weather",
                "input": {"city": "A very long city name indeed"},
            }
        ]
    )
    kw = dict(model=MODEL, messages=user("weather?"), tools=[WEATHER], max_tokens=2)
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kw))
        finish = chunks[-1].choices[0].finish_reason
        names = [
            tc.function.name
            for c in chunks
            for tc in c.choices[0].delta.tool_calls or []
            if tc.function and tc.function.name
        ]
    else:
        reply = oai.chat.completions.create(**kw)
        finish = reply.choices[0].finish_reason
        names = [tc.function.name for tc in reply.choices[0].message.tool_calls]
    assert finish == "length"
    assert names == ["get_weather"]
    assert sent(anthropic_emu)["max_tokens"] == 2


def test_tool_result_round_trip_over_two_turns(oai, anthropic_emu):
    anthropic_emu.script(
        [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "name": "get_time", "input": {}},
        ]
    )
    messages = [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "weather and time in Paris?"},
    ]
    first = oai.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME])
    calls = first.choices[0].message.tool_calls
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21°C"})
    messages.append(
        {
            "role": "tool",
            "tool_call_id": calls[1].id,
            "content": [{"type": "text", "text": "14:05"}],
        }
    )
    second = oai.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME])
    assert second.choices[0].finish_reason == "stop"
    body = sent(anthropic_emu)
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assistant = body["messages"][1]["content"]
    assert assistant[0] == {"type": "text", "text": "Checking both."}
    assert assistant[1] == {
        "type": "tool_use",
        "id": calls[0].id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "Sunny, 21°C"},
        {"type": "tool_result", "tool_use_id": calls[1].id, "content": "14:05"},
    ]


def test_tool_choice_and_parallel_tool_calls(oai, anthropic_emu):
    oai.chat.completions.create(
        model=MODEL,
        messages=user("x"),
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
    )
    assert sent(anthropic_emu)["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    oai.chat.completions.create(
        model=MODEL,
        messages=user("x"),
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert sent(anthropic_emu)["tool_choice"] == {"type": "tool", "name": "get_time"}
    reply = oai.chat.completions.create(
        model=MODEL, messages=user("get_weather please"), tools=[WEATHER], tool_choice="none"
    )
    assert sent(anthropic_emu)["tool_choice"] == {"type": "none"}
    assert reply.choices[0].message.tool_calls is None


# -- request fields --------------------------------------------------------------------------


def test_system_messages_whitespace_multiple_and_mid_conversation(oai, anthropic_emu):
    oai.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "   "},
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "system", "content": "Now be polite."},
            {"role": "user", "content": "again"},
        ],
    )
    body = sent(anthropic_emu)
    assert body["system"] == "You are terse.\nAnswer in French.\nNow be polite."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_consecutive_same_role_turns_are_merged(oai, anthropic_emu):
    oai.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "ok"},
            {"role": "assistant", "content": "and"},
            {"role": "user", "content": "three"},
        ],
    )
    msgs = sent(anthropic_emu)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert [b["text"] for b in msgs[0]["content"]] == ["one", "two"]


def test_stop_sequences_drop_whitespace_only(oai, anthropic_emu):
    oai.chat.completions.create(model=MODEL, messages=user("x"), stop=["\n", "END", "  "])
    assert sent(anthropic_emu)["stop_sequences"] == ["END"]
    oai.chat.completions.create(model=MODEL, messages=user("x"), stop=" \n")
    assert "stop_sequences" not in sent(anthropic_emu)
    oai.chat.completions.create(model=MODEL, messages=user("x"), stop="DONE")
    assert sent(anthropic_emu)["stop_sequences"] == ["DONE"]


def test_images_as_data_url_and_http_url(oai, anthropic_emu):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    oai.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in these?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                ],
            }
        ],
    )
    content = sent(anthropic_emu)["messages"][0]["content"]
    assert content[1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": png},
    }
    assert content[2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
    }


def test_max_tokens_temperature_top_p_user(oai, anthropic_emu):
    oai.chat.completions.create(
        model=MODEL,
        messages=user("x"),
        max_completion_tokens=77,
        temperature=1.7,
        top_p=0.9,
        user="agent-7",
    )
    body = sent(anthropic_emu)
    assert body["max_tokens"] == 77
    assert body["temperature"] == 1.0
    assert "top_p" not in body  # current Claude models refuse both together
    assert body["metadata"] == {"user_id": "agent-7"}
    oai.chat.completions.create(model=MODEL, messages=user("x"), top_p=0.9)
    assert sent(anthropic_emu)["top_p"] == 0.9


def test_max_tokens_defaults_to_the_models_maximum_output(oai, anthropic_emu):
    from iron_runtime.pricing import PriceTable

    oai.chat.completions.create(model=MODEL, messages=user("x"))
    expected = PriceTable.builtin().max_output_tokens(MODEL)
    assert expected and expected >= 32_000
    assert sent(anthropic_emu)["max_tokens"] == expected


def test_response_format_becomes_a_system_instruction(oai, anthropic_emu):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2+2"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    system = sent(anthropic_emu)["system"]
    assert system.startswith("Be exact.\n")
    assert json.dumps(schema, separators=(",", ":")) in system


@pytest.mark.parametrize("extra, param", [({"n": 2}, "n"), ({"logprobs": True}, "logprobs")])
def test_unsupported_fields_are_refused(oai, anthropic_emu, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, messages=user("x"), **extra)
    assert err.value.param == param
    assert "Claude" in err.value.message
    assert not anthropic_emu.requests


def test_dropped_fields_do_not_reach_anthropic(oai, anthropic_emu):
    oai.chat.completions.create(
        model=MODEL,
        messages=user("x"),
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=0.1,
        logit_bias={"1": 1},
        store=False,
    )
    body = sent(anthropic_emu)
    assert not {"seed", "presence_penalty", "frequency_penalty", "logit_bias", "store"} & set(body)


def test_malformed_messages_are_a_clear_400(oai, anthropic_emu):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 5}])
    assert "messages.0.content" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=MODEL,
            messages=[
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{not json"},
                        }
                    ],
                },
            ],
        )
    assert "arguments must be a JSON object" in err.value.message
    assert not anthropic_emu.requests


# -- usage -----------------------------------------------------------------------------------


def test_usage_chunk_exactly_when_include_usage(oai):
    chunks, _ = collect(
        oai.chat.completions.create(
            model=MODEL,
            messages=user("count me"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])
    chunks, _ = collect(
        oai.chat.completions.create(model=MODEL, messages=user("count me"), stream=True)
    )
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_cache_read_and_write_tokens(oai, anthropic_emu, stream):
    anthropic_emu.cache_read_tokens, anthropic_emu.cache_write_tokens = 1000, 200
    kw = dict(model=MODEL, messages=user("cached prompt here"))
    if stream:
        chunks, _ = collect(
            oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
        )
        usage = chunks[-1].usage
    else:
        usage = oai.chat.completions.create(**kw).usage
    fresh = 6  # the emulator's count for this prompt
    assert usage.prompt_tokens == fresh + 1000 + 200
    assert usage.prompt_tokens_details.cached_tokens == 1000
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, anthropic_type, exc, openai_type",
    [
        (400, "invalid_request_error", openai.BadRequestError, "invalid_request_error"),
        (429, "rate_limit_error", openai.RateLimitError, "rate_limit_error"),
        (529, "overloaded_error", openai.InternalServerError, "server_error"),
    ],
)
def test_anthropic_error_responses_in_openai_shape(
    oai, anthropic_emu, status, anthropic_type, exc, openai_type
):
    anthropic_emu.inject(
        Fault(
            status=status,
            body={
                "type": "error",
                "error": {"type": anthropic_type, "message": "upstream says no"},
            },
        )
    )
    with pytest.raises(exc) as err:
        oai.chat.completions.create(model=MODEL, messages=user("x"))
    assert err.value.status_code == status
    assert err.value.body["type"] == openai_type
    assert err.value.body["message"] == "upstream says no"


def test_anthropic_validation_error_passes_through_translated(oai, anthropic_emu):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(
            model=MODEL, messages=user("x"), top_p=0.5, extra_body={"temperature": -1}
        )
    assert "temperature" in err.value.message


def test_error_event_mid_stream_raises_in_the_sdk(oai, anthropic_emu):
    anthropic_emu.script(
        [{"type": "text", "text": "one two three four five"}], error_after_events=5
    )
    received = []
    with pytest.raises(openai.APIError, match="Overloaded"):
        for chunk in oai.chat.completions.create(model=MODEL, messages=user("x"), stream=True):
            received.append(chunk)
    assert received and received[0].choices[0].delta.role == "assistant"


def test_stream_cut_by_upstream_ends_with_an_error(oai, anthropic_emu):
    anthropic_emu.inject(Fault(drop_after_events=4))
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in oai.chat.completions.create(
            model=MODEL, messages=user("a b c d e f"), stream=True
        ):
            pass
    assert oai.chat.completions.create(model=MODEL, messages=user("still there?")).choices


def test_client_disconnecting_mid_stream_leaves_the_router_serving(router, oai, anthropic_emu):
    anthropic_emu.inject(Fault(chunk_delay=0.2))
    with httpx.stream(
        "POST",
        router.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {router.api_key}"},
        json={"model": MODEL, "stream": True, "messages": user("a b c d e f g h i")},
    ) as r:
        assert next(r.iter_raw()).startswith(b"data: ")
    assert oai.chat.completions.create(model=MODEL, messages=user("next")).choices


def test_gateway_stream_really_streams(oai, anthropic_emu):
    import time

    anthropic_emu.inject(Fault(chunk_delay=0.2))
    arrivals = []
    for _ in oai.chat.completions.create(model=MODEL, messages=user("a b c d e f"), stream=True):
        arrivals.append(time.monotonic())
    assert arrivals[0] < anthropic_emu.events_sent[-1] - 1.0


def test_tool_call_ids_anthropic_refuses_are_mapped_on_both_sides(oai, anthropic_emu):
    """Histories from other OpenAI-compatible models or MCP servers carry ids such as
    ``functions.get_weather:0``; Anthropic accepts only ``^[a-zA-Z0-9_-]+$``."""
    foreign = ["functions.get_weather:0", "functions.get_weather:1", "call_ok-1"]
    messages = [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": i,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "x"}'},
                }
                for i in foreign
            ],
        },
        *({"role": "tool", "tool_call_id": i, "content": "Sunny"} for i in foreign),
    ]
    answer = oai.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content
    body = sent(anthropic_emu)
    uses = [b["id"] for b in body["messages"][1]["content"]]
    results = [b["tool_use_id"] for b in body["messages"][2]["content"]]
    assert uses == results  # each tool_result still answers its tool_use
    assert len(set(uses)) == 3  # "…:0" and "…:1" do not collide
    assert uses[2] == "call_ok-1"  # a valid id passes unchanged
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in uses)
    # the same history gives the same ids (a conversation is re-sent every turn)
    oai.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert [b["id"] for b in sent(anthropic_emu)["messages"][1]["content"]] == uses
