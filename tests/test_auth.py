"""The router's token guards every proxied path; health and admin are separate."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

MESSAGES = [{"role": "user", "content": "hi"}]


def test_wrong_token_is_an_openai_authentication_error(router, openai_emu):
    client = openai.OpenAI(base_url=router.base_url, api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.code == "invalid_api_key"
    assert err.value.type == "authentication_error"
    assert not openai_emu.requests  # nothing reached the provider


def test_wrong_token_is_an_anthropic_authentication_error(router, anthropic_emu):
    client = anthropic.Anthropic(base_url=router.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert err.value.body["error"]["type"] == "authentication_error"
    assert not anthropic_emu.requests


def test_request_without_any_credentials_is_refused(router, openai_emu):
    r = httpx.post(
        router.base_url + "/chat/completions", json={"model": "gpt-4o", "messages": MESSAGES}
    )
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["x-iron-request-id"]
    assert not openai_emu.requests


def test_x_api_key_header_is_accepted(router, openai_emu):
    r = httpx.post(
        router.base_url + "/chat/completions",
        headers={"x-api-key": router.api_key},
        json={"model": "gpt-4o", "messages": MESSAGES},
    )
    assert r.status_code == 200
    seen = openai_emu.requests[-1].headers
    assert "x-api-key" not in seen
    assert seen["authorization"] == f"Bearer {openai_emu.api_key}"


def test_health_needs_no_token(router):
    r = httpx.get(router.base_url.removesuffix("/v1") + "/")
    assert r.status_code == 200
    assert r.text == "LlmRouter OK"


def test_admin_endpoint_is_invisible_to_the_agent_token(router):
    base = router.base_url.removesuffix("/v1")
    for headers in (
        {},
        {"authorization": f"Bearer {router.api_key}"},
        {"x-iron-admin-secret": router.api_key},
    ):
        r = httpx.get(base + "/_iron/status", headers=headers)
        assert r.status_code == 404
    assert router._admin("GET", "status")["pid"] == router.pid
