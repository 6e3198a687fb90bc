"""The official SDKs talk to the providers through a real router."""

from __future__ import annotations

import anthropic
import openai

MESSAGES = [{"role": "user", "content": "hello through the router"}]


def test_openai_chat_completion_goes_through_with_the_real_key(oai, router, openai_emu):
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Echo: hello through the router"
    assert completion.usage.prompt_tokens == 7
    seen = openai_emu.requests[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {openai_emu.api_key}"
    assert router.api_key not in str(seen.headers)
    assert raw.headers["x-iron-request-id"]
    assert raw.headers["x-request-id"].startswith("req_emu_")  # upstream headers come back
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"


def test_openai_chat_completion_streams_chunks_and_usage(oai, openai_emu):
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello through the router"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert openai_emu.requests[-1].json()["stream"] is True


def test_openai_tool_call_comes_back(oai):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    completion = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "call get_weather"}], tools=tools
    )
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris"}'


def test_anthropic_messages_go_through_with_x_api_key_and_version(claude, router, anthropic_emu):
    message = claude.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=MESSAGES)
    assert message.content[0].text == "Echo: hello through the router"
    assert message.usage.output_tokens == 5
    seen = anthropic_emu.requests[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == anthropic_emu.api_key
    assert "authorization" not in seen.headers  # the SDK's Bearer IC token is not forwarded
    assert router.api_key not in str(seen.headers)
    assert seen.headers["anthropic-version"]  # the SDK's own version, passed unchanged


def test_anthropic_messages_stream_every_event(claude, anthropic_emu):
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: hello through the router"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


def test_anthropic_version_defaults_when_client_sends_none(router, anthropic_emu):
    import httpx

    r = httpx.post(
        router.base_url.removesuffix("/v1") + "/anthropic/v1/messages",
        headers={"x-api-key": router.api_key},
        json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MESSAGES},
    )
    assert r.status_code == 200, r.text
    assert anthropic_emu.requests[-1].headers["anthropic-version"] == "2023-06-01"


def test_client_headers_reach_the_provider(router, openai_emu, anthropic_emu):
    client = openai.OpenAI(
        base_url=router.base_url,
        api_key=router.api_key,
        max_retries=0,
        organization="org-emu",
        project="proj-emu",
    )
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    seen = openai_emu.requests[-1].headers
    assert seen["openai-organization"] == "org-emu"
    assert seen["openai-project"] == "proj-emu"
    assert seen["user-agent"].startswith("OpenAI/Python")

    claude = anthropic.Anthropic(base_url=router.base_url, api_key=router.api_key, max_retries=0)
    claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=5,
        messages=MESSAGES,
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    assert anthropic_emu.requests[-1].headers["anthropic-beta"] == "prompt-caching-2024-07-31"


def test_path_prefix_picks_the_provider(router, anthropic_emu, openai_emu):
    base = router.base_url.removesuffix("/v1")
    claude = anthropic.Anthropic(
        base_url=base + "/anthropic", api_key=router.api_key, max_retries=0
    )
    claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert anthropic_emu.requests[-1].path == "/v1/messages"
    # a model name the router would send to OpenAI still goes to Anthropic under /anthropic
    claude.messages.create(model="my-fine-tune", max_tokens=5, messages=MESSAGES)
    assert anthropic_emu.requests[-1].json()["model"] == "my-fine-tune"
    oai = openai.OpenAI(base_url=base + "/openai/v1", api_key=router.api_key, max_retries=0)
    models = oai.models.list()
    assert [m.id for m in models][:1] == ["gpt-4o"]
    assert openai_emu.requests[-1].path == "/v1/models"


def test_model_name_routes_without_prefix(oai, openai_emu, anthropic_emu):
    oai.chat.completions.create(model="o3-mini", messages=MESSAGES)
    assert openai_emu.requests[-1].json()["model"] == "o3-mini"
    assert not anthropic_emu.requests


def test_query_string_is_kept(router, openai_emu):
    import httpx

    r = httpx.get(
        router.base_url + "/models?limit=2", headers={"authorization": f"Bearer {router.api_key}"}
    )
    assert r.status_code == 200
    assert openai_emu.requests[-1].path == "/v1/models?limit=2"
