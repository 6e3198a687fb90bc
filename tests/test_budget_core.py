"""Unit tests of the ledger, cost arithmetic, usage parsing, prices and offline token counts."""

from __future__ import annotations

import json
import threading

import pytest

from iron_runtime.budget import (
    BudgetExceeded,
    InsufficientBudget,
    Ledger,
    usd_to_micros,
)
from iron_runtime.cost import (
    Usage,
    cost_micros,
    requested_max_output,
    usage_from,
    worst_case_micros,
)
from iron_runtime.metering import StreamMeter, UsageMeter
from iron_runtime.pricing import ModelPrice, PriceTable

PRICE = ModelPrice(
    "m",
    "anthropic",
    input=3_000_000,
    output=15_000_000,
    cache_read=300_000,
    cache_write=3_750_000,
    max_output_tokens=64_000,
)


# -- ledger ----------------------------------------------------------------------------------


def test_reserve_exactly_what_is_left_and_not_one_more():
    ledger = Ledger(1000)
    r = ledger.reserve(400)
    with pytest.raises(InsufficientBudget):
        ledger.reserve(601)
    r2 = ledger.reserve(600)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(0)  # spent + reserved >= limit
    ledger.settle(r, 100)
    ledger.release(r2)
    assert ledger.status() == (100, 0, 1000)


def test_settle_and_release_are_idempotent():
    ledger = Ledger(None)
    r = ledger.reserve(50)
    ledger.settle(r, 20)
    ledger.settle(r, 20)
    ledger.release(r)
    assert ledger.status() == (20, 0, None)


def test_unlimited_ledger_never_refuses_and_set_limit_applies_at_once():
    ledger = Ledger(None)
    ledger.settle(ledger.reserve(10**12), 10**12)
    ledger.set_limit(10**12)
    with pytest.raises(BudgetExceeded):
        ledger.reserve(1)
    ledger.set_limit(10**12 + 5)
    ledger.reserve(5)


def test_ledger_under_threads_never_overcommits():
    ledger = Ledger(10_000)
    granted = []

    def worker():
        for _ in range(1000):
            try:
                r = ledger.reserve(7)
            except (BudgetExceeded, InsufficientBudget):
                continue
            granted.append(r)
            ledger.settle(r, 7)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent, reserved, limit = ledger.status()
    assert spent == 7 * len(granted) <= limit and reserved == 0


def test_budget_error_messages_carry_figures():
    e = BudgetExceeded(1_500_000, 250_000, 2_000_000)
    assert (e.status, e.type, e.code) == (402, "iron_cage_budget_exceeded", "budget_exceeded")
    assert "$1.50," in e.message and "$0.25," in e.message and "$2.00." in e.message
    e = InsufficientBudget(10, 20, "5 input + 10 output tokens of m")
    assert e.code == "insufficient_budget" and "5 input" in e.message


@pytest.mark.parametrize(
    "usd, micros", [(0, 0), (0.05, 50_000), (1.0000009, 1_000_000), (10, 10_000_000)]
)
def test_usd_to_micros_rounds_down(usd, micros):
    assert usd_to_micros(usd) == micros


def test_negative_budget_is_refused():
    with pytest.raises(ValueError):
        usd_to_micros(-1)


# -- cost ------------------------------------------------------------------------------------


def test_cost_prices_each_kind_of_token_once_and_rounds_up():
    usage = Usage(input=1000, output=200, cache_read=5000, cache_write=100)
    # 1000×3 + 200×15 + 5000×0.3 + 100×3.75 = 3000 + 3000 + 1500 + 375 µ$
    assert cost_micros(PRICE, usage) == 7875
    assert cost_micros(PRICE, Usage(input=1)) == 3
    cheap = ModelPrice("n", None, 50_000, 400_000, None, None, None)  # $0.05 / $0.40 per M
    assert cost_micros(cheap, Usage(input=1)) == 1  # 0.05 µ$ rounds up to 1
    assert cost_micros(cheap, Usage(cache_read=20)) == 1  # no cache rate: input rate


def test_worst_case_uses_the_dearest_input_rate():
    assert worst_case_micros(PRICE, 1000, 100) == 1000 * 3.75 + 100 * 15


def test_requested_max_output():
    assert requested_max_output({"max_completion_tokens": 5, "max_tokens": 9}) == 5
    assert requested_max_output({"max_tokens": 9}) == 9
    assert requested_max_output({"max_output_tokens": 7}) == 7
    assert requested_max_output({"max_tokens": True}) is None
    assert requested_max_output({}) is None


@pytest.mark.parametrize(
    "payload, usage",
    [
        (
            {
                "usage": {
                    "prompt_tokens": 100,
                    "completion_tokens": 20,
                    "prompt_tokens_details": {"cached_tokens": 30},
                }
            },
            Usage(70, 20, 30, 0),
        ),
        (
            {
                "usage": {
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cache_read_input_tokens": 7,
                    "cache_creation_input_tokens": 3,
                }
            },
            Usage(10, 5, 7, 3),
        ),
        (
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 9, "output_tokens": 1}},
            },
            Usage(9, 1, 0, 0),
        ),
        (
            {
                "type": "response.completed",
                "response": {
                    "usage": {
                        "input_tokens": 50,
                        "output_tokens": 8,
                        "input_tokens_details": {"cached_tokens": 10},
                    }
                },
            },
            Usage(40, 8, 10, 0),
        ),
        ({"usage": {"prompt_tokens": 12, "total_tokens": 12}}, Usage(12, 0, 0, 0)),
        ({"choices": []}, None),
        ("not a dict", None),
    ],
)
def test_usage_from_both_providers(payload, usage):
    assert usage_from(payload) == usage


# -- stream metering -------------------------------------------------------------------------


def _sse(obj, event=None):
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}\n\n".encode()


def test_openai_stream_meter_strips_the_usage_chunk_it_asked_for():
    meter = StreamMeter(anthropic=False, encoding_name="o200k_base", strip_usage_chunk=True)
    chunk = {"choices": [{"delta": {"content": "hello world"}}], "usage": None}
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    raw = _sse(chunk) + _sse(usage) + b"data: [DONE]\n\n"
    out = b"".join(meter.feed(raw[i : i + 7]) for i in range(0, len(raw), 7))
    assert b'"completion_tokens"' not in out
    assert out.endswith(b"data: [DONE]\n\n") and b"hello world" in out
    assert meter.meter.charged(input_estimate=1000) == Usage(9, 2, 0, 0)


def test_cut_stream_is_charged_for_input_and_delivered_output():
    meter = UsageMeter("cl100k_base")
    meter.observe_anthropic(
        {
            "type": "message_start",
            "message": {
                "usage": {"input_tokens": 40, "output_tokens": 1, "cache_read_input_tokens": 5}
            },
        }
    )
    meter.observe_anthropic(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "one two three"},
        }
    )
    assert meter.charged(input_estimate=999) == Usage(40, 3, 5, 0)
    openai = UsageMeter("o200k_base")
    openai.observe_openai({"choices": [{"delta": {"content": "one two three"}}]})
    assert openai.charged(input_estimate=77) == Usage(77, 3, 0, 0)


def test_complete_anthropic_stream_uses_reported_usage():
    meter = UsageMeter()
    meter.observe_anthropic(
        {"type": "message_start", "message": {"usage": {"input_tokens": 40, "output_tokens": 1}}}
    )
    meter.observe_anthropic(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 12},
        }
    )
    meter.observe_anthropic({"type": "message_stop"})
    assert meter.charged(0) == Usage(40, 12, 0, 0)


# -- prices ----------------------------------------------------------------------------------


def test_builtin_prices_cover_current_models():
    table = PriceTable.builtin()
    assert len(table) > 100
    for model in (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-5",
        "gpt-5-mini",
        "o3",
        "o4-mini",
        "claude-sonnet-4-6",
        "claude-opus-4-5",
        "claude-haiku-4-5",
    ):
        price = table.lookup(model)
        assert price is not None and price.priced and price.max_output_tokens, model


@pytest.mark.parametrize(
    "name, found",
    [
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001"),
        ("claude-sonnet-4-6-20990101", "claude-sonnet-4-6"),
        ("gpt-4o-2099-01-01", "gpt-4o"),
        ("claude-sonnet-4-6-latest", "claude-sonnet-4-6"),
        ("anthropic/claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("openai/gpt-4o-2099-01-01", "gpt-4o"),
    ],
)
def test_lookup_order(name, found):
    assert PriceTable.builtin().lookup(name).model == found


def test_lookup_misses_cleanly():
    assert PriceTable.builtin().lookup("llama-3.1-70b") is None


def test_user_file_merges_over_the_builtin(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "gpt-4o": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                "sample_spec": {"input_cost_per_token": "x"},
            }
        )
    )
    table = PriceTable.load(f)
    assert table.lookup("gpt-4o").input == 1_000_000
    assert table.lookup("gpt-4o-mini") is not None
    f.write_text(json.dumps({"bad": {"input_cost_per_token": -1}}))
    with pytest.raises(ValueError, match="negative"):
        PriceTable.load(f)
    f.write_text("{nope")
    with pytest.raises(ValueError, match="price file"):
        PriceTable.load(f)


def test_prices_are_exact_integers():
    p = PriceTable.builtin().lookup("claude-sonnet-4-6")
    assert (p.input, p.output, p.cache_read, p.cache_write) == (
        3_000_000,
        15_000_000,
        300_000,
        3_750_000,
    )


# -- tokens offline --------------------------------------------------------------------------


def test_token_counting_never_touches_the_network(monkeypatch):
    import tiktoken.load

    from iron_runtime import tokens

    def no_network(*a, **kw):
        raise AssertionError("tiktoken tried to fetch a file")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_network)
    monkeypatch.setattr(tokens, "_encodings", {})
    assert tokens.count_text("hello world", "o200k_base") == 2
    assert tokens.count_text("hello world", "cl100k_base") == 2


def test_request_counts():
    from iron_runtime.tokens import CLAUDE_MARGIN, IMAGE_TOKENS, count_request, count_text

    body = {"messages": [{"role": "user", "content": "hello world"}]}
    assert count_request(body, "gpt-4o", anthropic=False) == 2 + 4 + 3
    claude = count_request({**body, "system": "be brief"}, "claude-x", anthropic=True)
    assert claude == -(-(2 + 2 + 4 + 3) * CLAUDE_MARGIN // 1)
    image = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            }
        ]
    }
    assert count_request(image, "gpt-4o", False) == IMAGE_TOKENS + 4 + 3
    embeddings = {"model": "text-embedding-3-small", "input": "hello world"}
    assert count_request(embeddings, "text-embedding-3-small", False) == count_text(
        json.dumps(embeddings), "cl100k_base"
    )


def test_price_check_script_passes_on_the_builtin_table_and_catches_bad_rows(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "check_prices.py"
    ok = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "m": {
                    "input_cost_per_token": "3",
                    "output_cost_per_token": 1e-6,
                    "max_output_tokens": 0,
                }
            }
        )
    )
    out = subprocess.run([sys.executable, str(script), str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "input_cost_per_token" in out.stdout and "max_output_tokens" in out.stdout


# -- analytics events ------------------------------------------------------------------------


def test_event_for_a_completed_request_counts_every_input_token_once():
    from iron_runtime.analytics.events import event_for
    from iron_runtime.cost import Usage
    from iron_runtime.exchange import Exchange
    from iron_runtime.providers import Provider

    x = Exchange("r1", provider=Provider.ANTHROPIC, model="claude-haiku-4-5", stream=True)
    x.usage = Usage(input=10, output=5, cache_read=100, cache_write=20)
    x.cost_micros, x.ttft_ms, x.status = 77, 3.5, 200
    e = event_for(x)
    assert e.event_type == "llm_request_completed"
    assert (e.input_tokens, e.output_tokens, e.cached_tokens, e.cost_micros) == (130, 5, 100, 77)
    assert e.request_id == "r1" and e.provider == "anthropic" and e.ttft_ms == 3.5
    assert e.wire("ic_tok")["ic_token"] == "ic_tok" and e.wire("ic_tok")["stream"] is True


@pytest.mark.parametrize(
    "error, status, upstream, code, message",
    [
        ("insufficient", 402, "", "insufficient_budget", "m"),
        (None, 429, "slow down", "429", "slow down"),
        ("connection", None, "", "connection_error", "client disconnected"),
        ("connection", 200, "", "connection_error", "client disconnected"),  # cut mid-stream
        ("stream", 200, "", "stream_error", "cut"),
    ],
)
def test_event_for_failures(error, status, upstream, code, message):
    from iron_runtime import errors
    from iron_runtime.analytics.events import event_for
    from iron_runtime.exchange import Exchange
    from iron_runtime.providers import Provider

    x = Exchange("r2", provider=Provider.OPENAI, model="gpt-4o", status=status)
    x.error = {
        None: None,
        "insufficient": errors.RouterError(402, "t", "insufficient_budget", "m"),
        "connection": errors.connection_failed("client disconnected"),
        "stream": errors.stream_broken("cut"),
    }[error]
    e = event_for(x, upstream)
    assert e.event_type == "llm_request_failed" and e.error_code == code
    assert e.error_message == message and e.status == status and e.request_id == "r2"


def test_error_message_of_both_shapes():
    from iron_runtime.analytics.events import error_message_of

    assert error_message_of(b'{"error": {"message": "bad"}}') == "bad"
    assert error_message_of(b'{"type": "error", "error": {"type": "x", "message": "m"}}') == "m"
    assert error_message_of(b"<html>") == ""


def test_event_ids_are_unique_random_layout_uuids_also_in_a_forked_child():
    import os
    import uuid

    from iron_runtime.analytics.events import new_event_id

    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes its first id and leaves at once
        os.write(w, new_event_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(r, 100).decode()
    assert child[:18] != ids[0][:18]  # its own per-process prefix
