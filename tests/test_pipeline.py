"""The pipeline's stages as plain functions: no mitmproxy, no sockets."""

from __future__ import annotations

import asyncio
import json

import pytest

from iron_runtime import errors, pipeline
from iron_runtime.control import ProviderKey
from iron_runtime.cost import Usage
from iron_runtime.exchange import Exchange, Exchanges
from iron_runtime.keys import ProviderKeys
from iron_runtime.pipeline import Incoming, Services
from iron_runtime.providers import Provider

TOKEN = "agent-token"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def incoming(body=None, path="/v1/chat/completions", token=TOKEN, method="POST", **headers):
    raw = body if isinstance(body, bytes) else json.dumps(CHAT if body is None else body).encode()
    h = {"authorization": f"Bearer {token}", "content-type": "application/json", **headers}
    return Incoming(method, path, h, raw)


def admitted(body=None, path="/v1/chat/completions", **kw) -> Exchange:
    x = Exchange("req_test")
    assert pipeline.admit(x, incoming(body, path, **kw), TOKEN, 1 << 20) is None
    return x


# -- admit -----------------------------------------------------------------------------------


def test_admit_routes_by_model_and_keeps_the_parsed_payload():
    x = admitted({**CHAT, "model": "claude-haiku-4-5", "stream": True})
    assert (x.provider, x.model, x.route, x.path) == (
        Provider.ANTHROPIC,
        "claude-haiku-4-5",
        "model",
        "/v1/chat/completions",
    )
    assert x.gateway and x.stream and x.payload["messages"] == CHAT["messages"]


def test_admit_takes_the_provider_prefix_off_the_path():
    x = admitted({"model": "x", "messages": []}, path="/anthropic/v1/messages")
    assert (x.provider, x.route, x.path, x.gateway) == (
        Provider.ANTHROPIC,
        "prefix",
        "/v1/messages",
        False,
    )


def test_health_check_needs_no_token():
    x = Exchange("r")
    assert pipeline.admit(x, incoming(b"", "/", token="nope", method="GET"), TOKEN, 10) is None
    assert x.local == "health" and x.provider is None


@pytest.mark.parametrize(
    "req, code, status",
    [
        (incoming(token="wrong"), "invalid_api_key", 401),
        (incoming({**CHAT, "pad": "x" * 200}), "request_too_large", 413),
        (incoming(path="/v1/chat%2Fcompletions"), "invalid_request", 400),
        (incoming(b"{not json"), "invalid_request", 400),
        (incoming({**CHAT, "model": "claude-haiku-4-5"}, "/v1/embeddings"), None, 400),
    ],
)
def test_admit_refuses_with_the_right_error(req, code, status):
    x = Exchange("r")
    err = pipeline.admit(x, req, TOKEN, 150)
    assert isinstance(err, errors.RouterError) and err.status == status
    assert code is None or err.code == code


def test_admit_answers_an_anthropic_client_in_its_own_shape():
    x = Exchange("r")
    err = pipeline.admit(x, incoming({}, "/v1/messages", token="wrong"), TOKEN, 1 << 20)
    assert err is not None and x.shape == "anthropic"
    assert json.loads(err.body(x.shape))["type"] == "error"


def test_admit_uses_a_token_checked_on_the_headers_without_checking_again():
    x = Exchange("r", authenticated=True)
    assert pipeline.admit(x, incoming(token="masked …"), TOKEN, 1 << 20) is None


# -- key -------------------------------------------------------------------------------------


def test_key_is_the_configured_one():
    s = Services()
    x = admitted()
    k = pipeline.key(x, ProviderKeys({Provider.OPENAI: "sk-real-1234567890"}), s.link)
    assert isinstance(k, pipeline.ForwardKey) and k.secret == "sk-real-1234567890"
    assert "sk-real" not in repr(k)


def test_no_key_for_the_provider_is_a_403_naming_the_option():
    x = admitted({**CHAT, "model": "claude-haiku-4-5"})
    err = pipeline.key(x, ProviderKeys({Provider.OPENAI: "sk-o"}), Services().link)
    assert isinstance(err, errors.RouterError) and err.status == 403
    assert "iron_anthropic_key" in err.message


def test_a_server_key_for_another_provider_is_refused():
    x = admitted({**CHAT, "model": "claude-haiku-4-5"})
    err = pipeline._server_key(x, ProviderKey("sk-o", Provider.OPENAI))
    assert isinstance(err, errors.RouterError) and err.code == "key_unavailable"
    ok = pipeline._server_key(x, ProviderKey("sk-ant", Provider.ANTHROPIC, "http://127.0.0.1:9/b"))
    assert isinstance(ok, pipeline.ForwardKey) and ok.upstream.base_path == "/b"


# -- translate -------------------------------------------------------------------------------


def test_translate_turns_a_claude_chat_request_into_a_messages_body():
    x = admitted({**CHAT, "model": "claude-haiku-4-5", "temperature": 0.5})
    assert pipeline.translate(x, Services().prices) is None
    assert x.translated and x.upstream_model == "claude-haiku-4-5"
    assert x.payload["max_tokens"] == 10 and x.payload["messages"][0]["role"] == "user"


def test_translate_leaves_other_requests_alone():
    x = admitted()
    assert pipeline.translate(x, Services().prices) is None and not x.translated


# -- reserve ---------------------------------------------------------------------------------


def budgeted(limit_micros: int | None = 1_000_000) -> Services:
    s = Services()
    s.ledger.set_limit(limit_micros)
    return s


def test_reserve_holds_the_worst_case_in_the_ledger():
    s, x = budgeted(), admitted()
    assert pipeline.reserve(x, s, 100) is None
    assert x.reservation is not None and x.reservation.amount > 0 and x.input_estimate > 0
    assert s.ledger.status()[1] == x.reservation.amount and x.cost_known is True


def test_reserve_refuses_what_does_not_fit_and_counts_the_refusal():
    s, x = budgeted(1), admitted()
    err = pipeline.reserve(x, s, 100)
    assert isinstance(err, errors.RouterError) and err.code == "insufficient_budget"
    assert s.ledger.report()["refused"] == 1 and x.reservation is None


def test_reserve_refuses_an_unpriced_model_only_under_a_budget():
    x = admitted({**CHAT, "model": "no-such-model"})
    err = pipeline.reserve(x, budgeted(), 100)
    assert isinstance(err, errors.RouterError) and err.code == "unpriced_model"
    y = admitted({**CHAT, "model": "no-such-model"})
    assert pipeline.reserve(y, budgeted(None), 100) is None and y.cost_known is False


def test_free_endpoints_are_not_reserved():
    x = admitted({"model": "gpt-4o", "input": "x"}, path="/v1/moderations")
    assert pipeline.reserve(x, budgeted(1), 100) is None and x.reservation is None


def test_a_streamed_openai_chat_asks_for_the_usage_chunk_it_will_strip():
    s, x = budgeted(), admitted({**CHAT, "stream": True})
    assert pipeline.reserve(x, s, 100) is None
    assert x.strip_usage_chunk and x.payload["stream_options"] == {"include_usage": True}


def test_a_long_prompt_is_counted_off_the_event_loop():
    s = budgeted()
    x = admitted({**CHAT, "messages": [{"role": "user", "content": "word " * 20_000}]})
    pending = pipeline.reserve(x, s, pipeline.INLINE_COUNT_BYTES + 1)
    assert asyncio.iscoroutine(pending)
    assert asyncio.run(pending) is None and x.input_estimate > 20_000


# -- stream ----------------------------------------------------------------------------------


def test_stream_translates_a_translated_answer_and_meters_it():
    x = admitted({**CHAT, "model": "claude-haiku-4-5", "stream": True})
    pipeline.translate(x, Services().prices)
    fn = pipeline.stream(x, 200)
    sse = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c",'
        b'"usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":3}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out = b"".join(bytes(part) for part in (fn(sse), fn(b"")) if part)
    assert b'"content":"Hi"' in out.replace(b" ", b"") and out.rstrip().endswith(b"[DONE]")
    assert x.stream_complete is True and x.error is None
    assert x.meter is not None and x.meter.charged(0) == Usage(7, 3, 0, 0)


def test_stream_passes_an_unreserved_untranslated_answer_through():
    assert pipeline.stream(admitted({**CHAT, "stream": True}), 200) is None


# -- finish ----------------------------------------------------------------------------------


def reserved(s: Services) -> Exchange:
    x = admitted()
    assert pipeline.reserve(x, s, 100) is None
    return x


def test_settle_charges_the_answers_usage_and_reports_it():
    s = budgeted()
    x = reserved(s)
    answer = {"usage": {"prompt_tokens": 1000, "completion_tokens": 100}}
    pipeline.settle(x, s, 200, lambda: json.dumps(answer).encode())
    spent, held, _ = s.ledger.status()
    assert held == 0 and spent == x.cost_micros > 0
    assert x.usage == Usage(1000, 100, 0, 0)


def test_an_error_status_releases_the_reservation():
    s = budgeted()
    x = reserved(s)
    pipeline.settle(x, s, 429, lambda: b"{}")
    assert s.ledger.status()[:2] == (0, 0) and x.cost_micros is None


def test_a_request_the_provider_had_but_never_answered_costs_the_worst_case():
    s = budgeted()
    x = reserved(s)
    pipeline.settle_failure(x, s, answered=False, reached_provider=True)
    assert s.ledger.status()[:2] == (x.reservation.amount, 0) and x.cost_estimated


def test_a_connection_that_failed_before_the_provider_costs_nothing():
    s = budgeted()
    x = reserved(s)
    pipeline.settle_failure(x, s, answered=False, reached_provider=False)
    assert s.ledger.status()[:2] == (0, 0)


def test_settling_never_leaks_the_reservation_even_when_it_fails(monkeypatch):
    s = budgeted()
    x = reserved(s)

    def bug(*args):
        raise RuntimeError("a bug while charging")

    monkeypatch.setattr(pipeline, "cost_micros", bug)
    pipeline.settle(x, s, 200, lambda: b'{"usage": {"prompt_tokens": 1}}')
    assert s.ledger.status()[1] == 0


def test_a_reservation_is_settled_once_even_if_asked_twice():
    s = budgeted()
    x = reserved(s)
    pipeline.settle(x, s, 200, lambda: b'{"usage": {"prompt_tokens": 5, "completion_tokens": 2}}')
    cost = x.cost_micros
    pipeline.settle_failure(x, s, answered=True, reached_provider=True)
    assert x.cost_micros == cost and not x.cost_estimated and s.ledger.status()[:2] == (cost, 0)


def test_an_unpriced_model_without_a_budget_is_recorded_with_its_usage_and_no_cost():
    s = budgeted(None)
    x = admitted({**CHAT, "model": "no-such-model"})
    assert pipeline.reserve(x, s, 100) is None and x.cost_known is False
    x.status = 200
    pipeline.settle(x, s, 200, lambda: b'{"usage": {"prompt_tokens": 5, "completion_tokens": 2}}')
    assert x.usage == Usage(5, 2, 0, 0) and x.cost_micros is None
    e = pipeline.event(x)
    assert (e.input_tokens, e.output_tokens, e.cost_micros, e.cost_known) == (5, 2, 0, False)
    assert s.ledger.status() == (0, 0, None)


def test_event_of_a_completed_and_a_refused_request():
    s = budgeted()
    x = reserved(s)
    x.status = 200
    pipeline.settle(x, s, 200, lambda: b'{"usage": {"prompt_tokens": 5, "completion_tokens": 2}}')
    e = pipeline.event(x)
    assert e.event_type == "llm_request_completed" and (e.input_tokens, e.output_tokens) == (5, 2)
    assert e.request_id == "req_test" and e.cost_micros == x.cost_micros
    y = Exchange("r2", status=402, error=errors.unpriced_model("m"))
    f = pipeline.event(y)
    assert f.event_type == "llm_request_failed" and f.error_code == "unpriced_model"


def test_the_summary_is_json_and_holds_no_payload():
    s = budgeted()
    x = reserved(s)
    summary = x.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["provider"] == "openai" and summary["reservation_micros"] > 0
    assert "payload" not in summary and "hi" not in json.dumps(summary)


def test_exchanges_go_with_their_flows():
    class Flow:
        pass

    exchanges: Exchanges[Flow] = Exchanges()
    f = Flow()
    x = exchanges.start(f, lambda: "r1")
    assert exchanges.start(f, lambda: "r2") is x and x.request_id == "r1"
    assert exchanges.get(f) is x and exchanges.live() == [x]
    del f
    assert len(exchanges) == 0


# -- without a budget: no tokenizer work unless a figure is missing ---------------------------


@pytest.fixture
def no_tokenizer(monkeypatch):
    """Fails the test if anything tokenizes (and so would load a vocabulary)."""
    from iron_runtime import tokens

    def refuse(name):
        raise AssertionError(f"vocabulary {name} was needed")

    monkeypatch.setattr(tokens, "encoding", refuse)
    monkeypatch.setattr(tokens, "_encodings", {})  # as in a router that built none


def test_without_a_budget_an_answered_request_is_never_tokenized(no_tokenizer):
    s = budgeted(None)
    x = admitted({**CHAT, "stream": True})
    assert pipeline.reserve(x, s, 100) is None
    assert x.reservation.amount == 0 and x.input_estimate is None and x.strip_usage_chunk
    fn = pipeline.stream(x, 200)
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hello there"}}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
    for event in (chunk, usage):
        fn(b"data: " + json.dumps(event).encode() + b"\n\n")
    fn(b"data: [DONE]\n\n")
    fn(b"")
    pipeline.settle(x, s, 200, lambda: b"")
    assert x.usage == Usage(9, 2, 0, 0) and s.ledger.status()[0] == x.cost_micros > 0
    y = admitted()
    assert pipeline.reserve(y, s, 100) is None
    pipeline.settle(y, s, 200, lambda: b'{"usage": {"prompt_tokens": 4, "completion_tokens": 1}}')
    assert y.usage == Usage(4, 1, 0, 0) and "input_estimate" not in y.summary()


def test_without_a_budget_a_cut_stream_is_estimated_without_a_vocabulary(no_tokenizer):
    s = budgeted(None)
    x = admitted({**CHAT, "stream": True})
    assert pipeline.reserve(x, s, 100) is None
    fn = pipeline.stream(x, 200)
    fn(b'data: {"choices": [{"index": 0, "delta": {"content": "Hello there"}}]}\n\n')
    pipeline.settle_failure(x, s, answered=True, reached_provider=True)  # cut: no usage came
    # a token per 4 UTF-8 bytes: "Hello there" is 11 bytes; "hi" 2 bytes, 4 + 3 overhead
    assert x.usage == Usage(1 + 4 + 3, 3, 0, 0) and x.input_estimate == 8
    assert s.ledger.status()[:2] == (x.cost_micros, 0) and x.cost_micros > 0


def test_without_a_budget_an_unanswered_request_is_recorded_at_its_worst_case():
    from iron_runtime.tokens import encoding

    encoding("o200k_base")  # built: the estimate is then exact
    s = budgeted(None)
    x = admitted()
    assert pipeline.reserve(x, s, 100) is None
    pipeline.settle_failure(x, s, answered=False, reached_provider=True)
    with_budget = reserved(budgeted())
    assert x.cost_estimated and x.cost_micros == with_budget.reservation.amount > 0


def test_a_long_stream_without_usage_is_counted_in_slices():
    from iron_runtime.metering import PENDING_CHARS, UsageMeter
    from iron_runtime.tokens import count_text

    meter = UsageMeter("o200k_base")
    text = "word " * 1000
    n = 3 * PENDING_CHARS // len(text) + 1
    for _ in range(n):
        meter.observe_openai({"choices": [{"index": 0, "delta": {"content": text}}]})
    assert meter.pending_chars <= PENDING_CHARS and meter.counted > 0  # held text is bounded
    # the text counted as it reads, joined: within a token per delta of counting each alone
    each_alone = n * count_text(text, "o200k_base")
    charged = meter.charged(7)
    assert charged.input == 7 and abs(charged.output - each_alone) <= n


def test_the_summary_of_a_model_name_with_a_lone_surrogate_can_be_written_as_utf8():
    x = admitted({**CHAT, "model": "gpt-4o-\ud800"})
    x.error = errors.unpriced_model(x.model)
    text = json.dumps(x.summary(), ensure_ascii=False)
    text.encode("utf-8")  # what mitmproxy's flow dump does with it
    assert x.summary()["model"] == "gpt-4o-\ufffd" and "\ud800" not in text
