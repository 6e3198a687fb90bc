"""Bad input gets a clear JSON error, and the router keeps serving the next request."""

from __future__ import annotations

import socket

import anthropic
import httpx
import openai
import pytest

from iron_runtime.testing import Fault

from .conftest import free_port

MESSAGES = [{"role": "user", "content": "hi"}]


def _auth(router):
    return {"authorization": f"Bearer {router.api_key}", "content-type": "application/json"}


def _still_serves(oai) -> None:
    assert oai.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices


def test_malformed_json_is_a_400_bad_request(router, oai, openai_emu):
    r = httpx.post(
        router.base_url + "/chat/completions",
        headers=_auth(router),
        content=b'{"model": "gpt-4o", "messages": [',
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]
    assert not openai_emu.requests
    _still_serves(oai)


def test_invalid_utf8_and_non_object_bodies_are_400(router, oai):
    r = httpx.post(
        router.base_url + "/chat/completions",
        headers=_auth(router),
        content=b'{"model": "\xff\xfe"}',
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]["message"]
    r = httpx.post(router.base_url + "/chat/completions", headers=_auth(router), content=b"[1]")
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.post(
        router.base_url + "/chat/completions", headers=_auth(router), content=b'{"model": 5}'
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    _still_serves(oai)


def test_anthropic_client_gets_errors_in_anthropic_shape(router, claude):
    r = httpx.post(
        router.base_url + "/messages",
        headers={
            "x-api-key": router.api_key,
            "anthropic-version": "2023-06-01",
            "content-type": "application/json",
        },
        content=b"{not json",
    )
    assert r.status_code == 400
    assert r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_body_over_the_limit_is_413(router, oai, openai_emu):
    big = "x" * (10 * 1024 * 1024 + 10)
    with pytest.raises(openai.APIStatusError) as err:
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": big}])
    assert err.value.status_code == 413
    assert "over the router's limit" in err.value.message
    assert not openai_emu.requests
    _still_serves(oai)


def test_unknown_path_gets_the_providers_own_404(oai, router):
    r = httpx.post(router.base_url + "/no/such/endpoint", headers=_auth(router), json={})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"
    _still_serves(oai)


def test_upstream_status_errors_pass_through_unchanged(oai, claude, openai_emu, anthropic_emu):
    openai_emu.inject(
        Fault(status=429, body={"error": {"message": "slow down", "type": "rate_limit_error"}})
    )
    with pytest.raises(openai.RateLimitError, match="slow down"):
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    anthropic_emu.inject(
        Fault(
            status=529,
            body={"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    )
    with pytest.raises(anthropic.APIStatusError) as err:
        claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert err.value.status_code == 529
    assert err.value.body["error"]["type"] == "overloaded_error"
    _still_serves(oai)


def test_upstream_dropping_the_connection_is_a_json_502(oai, openai_emu):
    openai_emu.inject(Fault(drop=True))
    with pytest.raises(openai.InternalServerError) as err:
        oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.status_code == 502
    assert err.value.body["type"] == "iron_cage_upstream_error"
    _still_serves(oai)


def test_upstream_down_is_a_json_502_for_both_sdks(openai_emu, anthropic_emu):
    dead = f"http://127.0.0.1:{free_port()}"
    from iron_runtime import LlmRouter

    with LlmRouter(
        provider_keys={"openai": "sk-a", "anthropic": "sk-ant-b"},
        upstreams={"openai": dead, "anthropic": dead},
    ) as router:
        oai = openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)
        with pytest.raises(openai.InternalServerError) as err:
            oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert err.value.status_code == 502
        assert "could not get an answer from the provider" in err.value.message
        claude = anthropic.Anthropic(
            base_url=router.base_url, api_key=router.api_key, max_retries=0
        )
        with pytest.raises(anthropic.InternalServerError) as aerr:
            claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
        assert aerr.value.status_code == 502
        assert aerr.value.body["error"]["type"] == "iron_cage_upstream_error"
        assert httpx.get(router.base_url.removesuffix("/v1") + "/").status_code == 200


def test_stream_cut_by_upstream_ends_the_client_stream_with_an_error(oai, openai_emu):
    openai_emu.inject(Fault(drop_after_events=2))
    received = []
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
            received.append(chunk)
    assert len(received) == 2
    _still_serves(oai)


def test_garbage_http_is_refused_and_router_keeps_serving(router, oai):
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"application/json" in reply
    _still_serves(oai)


def test_missing_provider_key_is_a_403_naming_the_fix(openai_emu, anthropic_emu):
    from iron_runtime import LlmRouter

    with LlmRouter(
        provider_key=openai_emu.api_key,
        upstreams={"openai": openai_emu.url, "anthropic": anthropic_emu.url},
    ) as r:
        claude = anthropic.Anthropic(base_url=r.base_url, api_key=r.api_key, max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError) as err:
            claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
        assert err.value.body["error"]["type"] == "iron_cage_key_unavailable"
        assert "provider_keys" in err.value.message
        assert not anthropic_emu.requests
