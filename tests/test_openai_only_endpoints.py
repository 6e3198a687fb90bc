"""OpenAI-only APIs called with a Claude model get a clear error in OpenAI's shape that says
what to use instead, rather than Anthropic's bare 404."""

from __future__ import annotations

import httpx
import openai
import pytest


def test_responses_api_with_a_claude_model_names_the_way_out(oai, anthropic_emu):
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="claude-sonnet-4-6", input="hi")
    message = err.value.message
    assert "Responses API" in message
    assert "/v1/chat/completions" in message
    assert "OpenAIChatCompletionsModel" in message
    assert err.value.code == "unsupported_endpoint"
    assert not anthropic_emu.requests


def test_embeddings_with_a_claude_model_is_refused_clearly(oai, anthropic_emu):
    with pytest.raises(openai.BadRequestError, match="embeddings, which only OpenAI offers"):
        oai.embeddings.create(model="claude-sonnet-4-6", input="hi")
    assert not anthropic_emu.requests


@pytest.mark.parametrize(
    "path",
    ["/images/generations", "/audio/speech", "/completions", "/moderations"],
)
def test_every_openai_only_path_routed_by_a_claude_model_is_refused(router, anthropic_emu, path):
    r = httpx.post(
        router.base_url + path,
        headers={"authorization": f"Bearer {router.api_key}"},
        json={"model": "claude-sonnet-4-6", "prompt": "hi", "input": "hi"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_endpoint"
    assert not anthropic_emu.requests


def test_an_explicit_anthropic_prefix_is_still_forwarded(router, anthropic_emu):
    r = httpx.post(
        router.base_url.removesuffix("/v1") + "/anthropic/v1/embeddings",
        headers={"authorization": f"Bearer {router.api_key}"},
        json={"model": "claude-sonnet-4-6", "input": "hi"},
    )
    assert r.status_code == 404  # Anthropic's own answer: the user asked for it by name
    assert anthropic_emu.requests
