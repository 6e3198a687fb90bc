"""The original project's own end-to-end tests (``module/iron_sdk/tests/test_llm_router_e2e.py``
and ``test_budget_e2e.py`` of the Rust crate's Python package), ported to run against this
router in front of the local emulators instead of the real providers: a user of the
original who switches gets what those tests promised."""

from __future__ import annotations

import threading

import openai
import pytest

from iron_runtime import LlmRouter

from .conftest import make_router


def _client(router: LlmRouter) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)


def _is_budget_error(e: Exception) -> bool:
    text = str(e)
    return "Iron Cage" in text or "402" in text


# -- test_llm_router_e2e.py --------------------------------------------------------------


def test_router_starts_and_stops(openai_emu, anthropic_emu):
    router = make_router(openai_emu, anthropic_emu)
    assert router.is_running
    assert router.port > 0
    assert "127.0.0.1" in router.base_url and router.base_url.endswith("/v1")
    assert router.provider in ("openai", "anthropic", "unknown")
    router.stop()
    assert not router.is_running


def test_router_context_manager(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu) as router:
        assert router.is_running
    assert not router.is_running


def test_openai_chat_completion_gpt_5_nano(router):
    answer = _client(router).chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "Say hi"}],
        max_completion_tokens=10,
    )
    assert answer.choices[0].message.content


def test_invalid_token_rejected(router):
    bad = openai.OpenAI(base_url=router.base_url, api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-5-nano", messages=[{"role": "user", "content": "x"}])


def test_custom_cache_ttl(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, cache_ttl_seconds=60) as router:
        assert router.is_running


# -- test_budget_e2e.py --------------------------------------------------------------------


def test_openai_request_tracks_spending(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.05) as router:
        assert router.budget_status == (0.0, 0.05)
        _client(router).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
        spent, limit = router.budget_status
        assert 0 < spent < 0.05 and limit == 0.05


def test_openai_budget_exceeded_returns_402(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.0) as router:
        with pytest.raises(openai.APIStatusError) as err:
            _client(router).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        assert _is_budget_error(err.value)


def test_openai_spend_until_limit_hit(openai_emu, anthropic_emu):
    openai_emu.reply_text = "word " * 4000  # each answer uses all it may
    with make_router(openai_emu, anthropic_emu, budget=0.01) as router:
        client, successes = _client(router), 0
        for _ in range(50):
            try:
                client.chat.completions.create(
                    model="gpt-5-mini",
                    messages=[{"role": "user", "content": "write a lot"}],
                    max_completion_tokens=4000,
                )
                successes += 1
            except openai.APIStatusError as e:
                assert _is_budget_error(e)
                break
        else:
            pytest.fail("the budget was never hit")
        assert successes >= 1
        spent, limit = router.budget_status
        assert spent <= limit


@pytest.mark.parametrize("max_tokens", [2000, 4000])
def test_openai_concurrent_spend_until_limit_hit(openai_emu, anthropic_emu, max_tokens):
    openai_emu.reply_text = "word " * max_tokens
    with make_router(openai_emu, anthropic_emu, budget=0.05) as router:
        client = _client(router)
        results: list[str] = []

        def worker() -> None:
            for _ in range(20):
                try:
                    client.chat.completions.create(
                        model="gpt-5-mini",
                        messages=[{"role": "user", "content": "write a lot"}],
                        max_completion_tokens=max_tokens,
                    )
                    results.append("ok")
                except openai.APIStatusError as e:
                    results.append("budget" if _is_budget_error(e) else f"other: {e}")
                    return

        threads = [threading.Thread(target=worker) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert "ok" in results and "budget" in results
        assert not [r for r in results if r.startswith("other")]
        spent, limit = router.budget_status
        assert spent <= limit  # the original's "overspend problem" does not happen here


def test_anthropic_request_tracks_spending_with_claude_3_haiku(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.05) as router:
        _client(router).chat.completions.create(
            model="claude-3-haiku-20240307",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
        )
        spent, _ = router.budget_status
        assert 0 < spent < 0.05


def test_anthropic_budget_exceeded_returns_402(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.0) as router:
        with pytest.raises(openai.APIStatusError) as err:
            _client(router).chat.completions.create(
                model="claude-3-haiku-20240307",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=5,
            )
        assert _is_budget_error(err.value)


def test_budget_on_creation_and_set_budget(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=10.0) as router:
        assert router.budget == 10.0
        assert router.budget_status == (0.0, 10.0)
        router.set_budget(20.0)
        assert router.budget == 20.0


def test_no_budget_means_unlimited(router):
    assert router.budget is None
    assert router.budget_status is None


def test_set_budget_allows_more_requests(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.0) as router:
        client = _client(router)
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
        router.set_budget(0.05)
        assert client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        ).choices
