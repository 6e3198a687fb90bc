"""Corners of budget accounting and routing: each test pins one exit from the budget (n
choices, a client giving up, free and model-less calls, odd budgets) or one routing or
translation corner."""

from __future__ import annotations

import math
import time

import anthropic
import httpx
import openai
import pytest

from iron_runtime import LlmRouter
from iron_runtime.cost import worst_case_micros
from iron_runtime.metering import UsageMeter
from iron_runtime.pricing import PriceTable
from iron_runtime.testing import Fault
from iron_runtime.tokens import count_request

from .conftest import make_router

MSGS = [{"role": "user", "content": "x"}]


def test_n_choices_multiply_the_worst_case(openai_emu, anthropic_emu):
    body = {"model": "gpt-4o", "max_tokens": 1000, "messages": MSGS}
    one = worst_case_micros(
        PriceTable.builtin().lookup("gpt-4o"), count_request(body, "gpt-4o", False), 1000
    )
    with make_router(openai_emu, anthropic_emu, budget=one * 2 / 1e6) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key=r.api_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(n=8, **body)
        assert err.value.code == "insufficient_budget" and "8000 output" in err.value.message
        assert c.chat.completions.create(**body).choices


def test_responses_api_stream_usage_is_read():
    meter = UsageMeter("o200k_base")
    meter.observe_openai({"type": "response.output_text.delta", "delta": "hello world"})
    meter.observe_openai(
        {
            "type": "response.completed",
            "response": {
                "usage": {
                    "input_tokens": 30,
                    "output_tokens": 900,
                    "input_tokens_details": {"cached_tokens": 10},
                }
            },
        }
    )
    assert meter.complete
    assert meter.charged(5).output == 900 and meter.charged(5).cache_read == 10
    cut = UsageMeter("o200k_base")
    cut.observe_openai({"choices": [{"index": 0, "text": "legacy completion text"}]})
    assert cut.charged(5).output == 3


def test_gateway_keeps_the_routers_own_402(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.0) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key=r.api_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="claude-haiku-4-5", messages=MSGS, max_tokens=5)
        assert err.value.status_code == 402
        assert err.value.type == "iron_cage_budget_exceeded"


def test_client_giving_up_after_the_provider_got_the_request_is_charged(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=1.0) as r:
        c = openai.OpenAI(base_url=r.base_url, api_key=r.api_key, max_retries=0, timeout=0.4)
        c.with_options(timeout=30).chat.completions.create(
            model="gpt-4o", messages=MSGS, max_tokens=100
        )  # warm up
        r.set_budget(1.0 + r.total_spent())
        before = r.total_spent()
        openai_emu.inject(Fault(delay=1.5))
        with pytest.raises(openai.APITimeoutError):
            c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=100)
        deadline = time.monotonic() + 10
        while (
            r._admin("GET", "status")["budget"]["reserved_micros"] and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        st = r._admin("GET", "status")["budget"]
        body = {"model": "gpt-4o", "max_tokens": 100, "messages": MSGS}
        worst = worst_case_micros(
            PriceTable.builtin().lookup("gpt-4o"), count_request(body, "gpt-4o", False), 100
        )
        assert st["reserved_micros"] == 0
        assert st["spent_micros"] - round(before * 1e6) == worst


def test_anthropic_sdk_calls_without_a_model_go_to_anthropic(router, anthropic_emu, openai_emu):
    claude = anthropic.Anthropic(base_url=router.base_url, api_key=router.api_key, max_retries=0)
    with pytest.raises(anthropic.NotFoundError):  # the emulator has no model list
        claude.models.list()
    assert anthropic_emu.requests[-1].path.startswith("/v1/models")
    assert not openai_emu.requests


def test_count_tokens_is_free_and_model_less_posts_are_refused_under_a_budget(
    openai_emu, anthropic_emu
):
    with make_router(openai_emu, anthropic_emu, budget=0.01) as r:
        headers = {"x-api-key": r.api_key, "anthropic-version": "2023-06-01"}
        base = r.base_url.removesuffix("/v1")
        resp = httpx.post(
            base + "/v1/messages/count_tokens",
            headers=headers,
            json={"model": "claude-sonnet-4-6", "messages": MSGS},
        )
        assert resp.status_code == 404  # reached the emulator: not refused, not reserved
        assert r.total_spent() == 0
        resp = httpx.post(base + "/v1/messages/batches", headers=headers, json={"requests": []})
        assert resp.status_code == 402
        assert resp.json()["error"]["type"] == "iron_cage_unpriced_model"


@pytest.mark.parametrize("bad", [math.inf, math.nan, -1.0])
def test_non_finite_or_negative_budget_is_a_value_error(bad):
    with pytest.raises(ValueError):
        LlmRouter(provider_key="sk-x", budget=bad)


def test_lone_surrogate_in_a_streamed_request_is_forwarded(router):
    raw = (
        b'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "\\ud83d"}]}'
    )
    r = httpx.post(
        router.base_url + "/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {router.api_key}", "content-type": "application/json"},
    )
    assert r.status_code == 200
