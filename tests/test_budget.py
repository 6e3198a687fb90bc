"""Budget and cost through real routers: every token paid for, the limit never passed,
nothing left reserved whatever goes wrong."""

from __future__ import annotations

import json
import math
import threading
import time

import anthropic
import httpx
import openai
import pytest

from iron_runtime.cost import worst_case_micros
from iron_runtime.pricing import PriceTable
from iron_runtime.testing import Fault
from iron_runtime.tokens import count_request

from .conftest import make_router

PRICES = PriceTable.builtin()


def expected_cost(model, fresh, output, cache_read=0, cache_write=0):
    p = PRICES.lookup(model)
    read = p.input if p.cache_read is None else p.cache_read  # no cache rate: input rate
    write = p.input if p.cache_write is None else p.cache_write
    total = fresh * p.input + output * p.output + cache_read * read + cache_write * write
    return math.ceil(total / 1_000_000)


def status(router):
    return router._admin("GET", "status")["budget"]


def spent_micros(router):
    return status(router)["spent_micros"]


@pytest.fixture
def budget_router(openai_emu, anthropic_emu, tmp_path):
    r = make_router(openai_emu, anthropic_emu, budget=10.0)
    yield r
    r.stop()


def clients(router):
    return (
        openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0),
        anthropic.Anthropic(base_url=router.base_url, api_key=router.api_key, max_retries=0),
    )


# -- cost = price × usage --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_cost_is_price_times_usage_with_cached_tokens(budget_router, openai_emu, stream):
    oai, _ = clients(budget_router)
    openai_emu.cached_tokens = 4
    kw = dict(
        model="gpt-4o",
        messages=[{"role": "user", "content": "one two three four five"}],
        max_tokens=50,
    )
    before = spent_micros(budget_router)
    if stream:
        chunks = list(oai.chat.completions.create(stream=True, **kw))
        assert all(c.usage is None for c in chunks)  # the router's usage chunk is removed
        assert all(c.choices for c in chunks)
        assert openai_emu.requests[-1].json()["stream_options"] == {"include_usage": True}
        prompt, completion = 8, 6  # the emulator's counts: 5 words + 3, and "Echo: " + 5 words
    else:
        raw = oai.chat.completions.with_raw_response.create(**kw)
        usage = raw.parse().usage
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        assert (
            raw.headers["x-iron-cost-usd"]
            == f"{expected_cost('gpt-4o', prompt - 4, completion, cache_read=4) / 1e6:.6f}"
        )
    cost = spent_micros(budget_router) - before
    assert cost == expected_cost("gpt-4o", prompt - 4, completion, cache_read=4)
    assert status(budget_router)["reserved_micros"] == 0


def test_client_asking_for_usage_still_gets_its_chunk(budget_router):
    oai, _ = clients(budget_router)
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=20,
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_cost_with_cache_reads_and_writes(budget_router, anthropic_emu, stream):
    _, claude = clients(budget_router)
    anthropic_emu.cache_read_tokens, anthropic_emu.cache_write_tokens = 300, 50
    kw = dict(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": "alpha beta gamma"}],
    )
    before = spent_micros(budget_router)
    if stream:
        with claude.messages.stream(**kw) as s:
            usage = s.get_final_message().usage
    else:
        usage = claude.messages.create(**kw).usage
    cost = spent_micros(budget_router) - before
    assert cost == expected_cost(
        "claude-haiku-4-5", usage.input_tokens, usage.output_tokens, 300, 50
    )
    assert usage.cache_read_input_tokens == 300


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_gateway_cost_is_priced_from_anthropic_usage(budget_router, anthropic_emu, stream):
    oai, _ = clients(budget_router)
    anthropic_emu.cache_read_tokens, anthropic_emu.cache_write_tokens = 100, 20
    kw = dict(
        model="claude-sonnet-4-6",
        max_tokens=40,
        messages=[{"role": "user", "content": "price me please"}],
    )
    before = spent_micros(budget_router)
    if stream:
        list(oai.chat.completions.create(stream=True, **kw))
    else:
        oai.chat.completions.create(**kw)
    fresh, out = 6, 4  # the emulator's counts: 3 words + 3 per message; "Echo: price me please"
    assert spent_micros(budget_router) - before == expected_cost(
        "claude-sonnet-4-6", fresh, out, 100, 20
    )


# -- the guarantee under concurrency ---------------------------------------------------------


def test_fifty_threads_never_spend_past_the_limit(openai_emu, anthropic_emu):
    body = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "race"}]}
    worst = worst_case_micros(PRICES.lookup("gpt-4o"), count_request(body, "gpt-4o", False), 20)
    limit = worst * 10 + worst // 2  # room for about ten worst cases
    openai_emu.reply_text = "word " * 100  # every answer uses all of max_tokens
    actual = expected_cost("gpt-4o", 4, 20)  # the emulator's usage: 1 word + 3, 20 out
    with make_router(openai_emu, anthropic_emu, budget=limit / 1e6) as router:
        outcomes: list[str] = []
        lock = threading.Lock()

        def one() -> None:
            client = openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)
            openai_emu.inject(Fault(delay=0.05))
            try:
                client.chat.completions.create(**body)
                result = "ok"
            except openai.APIStatusError as e:
                result = e.code if e.status_code == 402 else f"other {e.status_code}"
            except Exception as e:  # pragma: no cover - reported below
                result = f"other {e!r}"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=one) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        st = status(router)
        assert len(outcomes) == 50
        assert not [o for o in outcomes if o.startswith("other")], outcomes
        assert outcomes.count("ok") >= 1
        assert (
            outcomes.count("ok")
            + outcomes.count("insufficient_budget")
            + outcomes.count("budget_exceeded")
            == 50
        )
        assert outcomes.count("ok") < 50  # some were refused
        assert st["spent_micros"] <= limit
        assert st["spent_micros"] == outcomes.count("ok") * actual  # every success was charged
        assert st["reserved_micros"] == 0


# -- nothing leaks ---------------------------------------------------------------------------


def test_storm_of_faults_leaves_nothing_reserved(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=5.0) as router:
        oai, claude = clients(router)
        msgs = [{"role": "user", "content": "storm"}]
        for fault in (
            Fault(status=500, body={"error": {"message": "boom"}}),
            Fault(drop=True),
            Fault(drop_after_events=2),
            Fault(status=429, body={}),
        ):
            openai_emu.inject(fault)
            with pytest.raises((openai.APIError, httpx.HTTPError)):
                for _ in oai.chat.completions.create(
                    model="gpt-4o", messages=msgs, max_tokens=50, stream=True
                ):
                    pass
        anthropic_emu.inject(Fault(drop=True))
        with pytest.raises(anthropic.APIError):
            claude.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=msgs)
        anthropic_emu.inject(Fault(drop_after_events=3))
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for _ in oai.chat.completions.create(
                model="claude-haiku-4-5", messages=msgs, max_tokens=20, stream=True
            ):
                pass
        for _ in range(3):  # clients hanging up mid-stream
            openai_emu.inject(Fault(chunk_delay=0.1))
            with httpx.stream(
                "POST",
                router.base_url + "/chat/completions",
                headers={"authorization": f"Bearer {router.api_key}"},
                json={
                    "model": "gpt-4o",
                    "stream": True,
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": "a b c d e"}],
                },
            ) as r:
                next(r.iter_raw())
        r = httpx.post(
            router.base_url + "/chat/completions",
            content=b'{"model": "gpt-4o", ',
            headers={"authorization": f"Bearer {router.api_key}"},
        )
        assert r.status_code == 400

        deadline = time.monotonic() + 10
        while status(router)["reserved_micros"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = status(router)
        assert st["reserved_micros"] == 0
        assert st["spent_micros"] > 0  # the cut streams were charged

        # a request whose worst case is exactly what is left goes through
        body = {"model": "gpt-4o", "max_tokens": 30, "messages": msgs}
        worst = worst_case_micros(PRICES.lookup("gpt-4o"), count_request(body, "gpt-4o", False), 30)
        router.set_budget((st["spent_micros"] + worst - 1) / 1e6)
        with pytest.raises(openai.APIStatusError) as err:
            oai.chat.completions.create(**body)
        assert err.value.status_code == 402 and err.value.code == "insufficient_budget"
        router.set_budget((st["spent_micros"] + worst) / 1e6)
        assert oai.chat.completions.create(**body).choices


def test_stream_cut_by_the_client_is_charged_for_delivered_tokens(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=5.0) as router:
        openai_emu.inject(Fault(chunk_delay=0.3))
        body = {
            "model": "gpt-4o",
            "stream": True,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "w1 w2 w3 w4 w5 w6 w7 w8"}],
        }
        with httpx.stream(
            "POST",
            router.base_url + "/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {router.api_key}"},
        ) as r:
            got = b""
            for raw in r.iter_raw():
                got += raw
                if got.count(b"data: ") >= 3:
                    break
        deadline = time.monotonic() + 10
        while status(router)["reserved_micros"] and time.monotonic() < deadline:
            time.sleep(0.05)
        st = status(router)
        assert st["reserved_micros"] == 0
        price = PRICES.lookup("gpt-4o")
        input_estimate = count_request(body, "gpt-4o", False)
        floor = math.ceil(input_estimate * price.input / 1e6)
        assert floor < st["spent_micros"] < worst_case_micros(price, input_estimate, 50)


# -- refusals, live changes, unpriced models -------------------------------------------------


def test_402_bodies_and_set_budget_unblocks_at_once(openai_emu, anthropic_emu):
    with make_router(openai_emu, anthropic_emu, budget=0.0) as router:
        oai, claude = clients(router)
        with pytest.raises(openai.APIStatusError) as err:
            oai.chat.completions.create(
                model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.status_code == 402
        assert err.value.type == "iron_cage_budget_exceeded"
        assert err.value.code == "budget_exceeded"
        assert "Iron Cage budget limit exceeded" in err.value.message
        assert "Limit: $0.00." in err.value.message
        with pytest.raises(anthropic.APIStatusError) as aerr:
            claude.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert aerr.value.status_code == 402
        assert aerr.value.body["error"]["type"] == "iron_cage_budget_exceeded"
        assert not openai_emu.requests and not anthropic_emu.requests

        router.set_budget(0.05)
        assert router.budget == 0.05
        assert oai.chat.completions.create(
            model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ).choices
        with pytest.raises(openai.APIStatusError) as err:
            oai.chat.completions.create(
                model="gpt-4o", max_tokens=100_000, messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.code == "insufficient_budget"
        assert "Estimated max cost" in err.value.message and "100000 output" in err.value.message
        spent, limit = router.budget_status
        assert 0 < spent < limit == 0.05
        assert router.total_spent() == spent


def test_unpriced_model_refused_with_a_budget_and_allowed_without(
    openai_emu, anthropic_emu, tmp_path
):
    msgs = [{"role": "user", "content": "x"}]
    with make_router(openai_emu, anthropic_emu, budget=1.0) as router:
        oai, _ = clients(router)
        with pytest.raises(openai.APIStatusError) as err:
            oai.chat.completions.create(model="my-private-model", messages=msgs)
        assert err.value.code == "unpriced_model"
        assert "pricing=" in err.value.message
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "my-private-model": {
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 2e-6,
                    "max_output_tokens": 100,
                }
            }
        )
    )
    with make_router(openai_emu, anthropic_emu, budget=1.0, pricing=prices) as router:
        oai, _ = clients(router)
        raw = oai.chat.completions.with_raw_response.create(model="my-private-model", messages=msgs)
        usage = raw.parse().usage
        assert router.total_spent() == (usage.prompt_tokens * 1 + usage.completion_tokens * 2) / 1e6
    with make_router(openai_emu, anthropic_emu) as router:
        oai, _ = clients(router)
        raw = oai.chat.completions.with_raw_response.create(model="my-private-model", messages=msgs)
        assert raw.parse().choices
        assert "x-iron-cost-usd" not in raw.headers
        assert router.budget is None and router.budget_status is None


def test_no_budget_means_unlimited_but_spend_is_tracked(router, oai):
    assert router.budget is None and router.budget_status is None
    before = router.total_spent()
    oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert router.total_spent() > before


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", "/v1/batches", {"model": "gpt-4o-mini", "input_file_id": "file-1"}),
        ("POST", "/v1/messages/batches", {"model": "claude-sonnet-4-6", "requests": []}),
        ("GET", "/v1/realtime?model=gpt-realtime", None),
        ("POST", "/v1/fine_tuning/jobs", {"model": "gpt-4o-mini", "training_file": "f"}),
    ],
)
def test_work_the_router_cannot_meter_is_refused_under_a_budget(
    openai_emu, anthropic_emu, method, path, body
):
    router = make_router(openai_emu, anthropic_emu, budget=5.0)
    try:
        r = httpx.request(
            method,
            router.base_url.removesuffix("/v1") + path,
            headers={"authorization": f"Bearer {router.api_key}"},
            json=body,
        )
        assert r.status_code == 402
        assert "cannot meter" in r.text
        assert not openai_emu.requests and not anthropic_emu.requests
    finally:
        router.stop()


def test_moderations_are_free_under_a_budget(openai_emu, anthropic_emu):
    router = make_router(openai_emu, anthropic_emu, budget=0.0)
    try:
        r = httpx.post(
            router.base_url + "/moderations",
            headers={"authorization": f"Bearer {router.api_key}"},
            json={"input": "hello"},
        )
        assert r.status_code != 402  # reaches the provider (the emulator has no moderations)
        assert openai_emu.requests
    finally:
        router.stop()
