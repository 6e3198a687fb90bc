"""Every addon's hooks, driven on ``tflow`` flows in hook order with one shared ``Services``
(``make_parts``), inside ``mitmproxy.test.taddons`` (no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow, tutils

from iron_runtime.addons.iron import make_parts
from iron_runtime.pipeline import Services

OPENAI_KEY = "sk-real-openai-key-1234"
ANTHROPIC_KEY = "sk-ant-real-key-5678"
SECRET = "admin-secret-0123456789"
SETUP = dict(
    iron_openai_key=OPENAI_KEY,
    iron_anthropic_key=ANTHROPIC_KEY,
    iron_openai_upstream="https://openai.test:8443/base",
    iron_anthropic_upstream="http://anthropic.test:9002",
)
AUTH = {"authorization": "Bearer direct"}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
CLAUDE_CHAT = {**CHAT, "model": "claude-haiku-4-5"}
HELLO = {"role": "assistant", "content": "Hello!"}
OPENAI_ANSWER = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": HELLO, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11},
}
ANTHROPIC_ANSWER = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [{"type": "text", "text": "Hello!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 5},
}
# gpt-4o: $2.50 / $10 per million tokens; CHAT counts 8 input tokens and allows 10 output.
CHAT_WORST_CASE = 8 * 25 // 10 + 10 * 10  # µ$
CHAT_COST = 8 * 25 // 10 + 3 * 10  # µ$, OPENAI_ANSWER's usage


class Iron:
    """The parts of ``make_parts`` over one ``Services``, each hook called on every addon
    in chain order, as mitmproxy does; hooks that must wait return awaitables."""

    def __init__(self, services: Services, tctx: taddons.context, chain: list) -> None:
        self.s, self.tctx, self.chain = services, tctx, chain
        for addon in chain:  # self.pricing, self.control, self.admin, self.router, ...
            setattr(self, type(addon).__name__.lower(), addon)

    def configure(self, **options) -> None:
        self.tctx.configure(self.router, **options)

    def lifecycle(self, name: str) -> None:  # running, done
        for addon in self.chain:
            getattr(addon, name, lambda: None)()

    def hook(self, name: str, flow) -> list:
        results = (getattr(a, name)(flow) for a in self.chain if hasattr(a, name))
        return [r for r in results if r is not None]

    def send(self, flow) -> list:
        return self.hook("requestheaders", flow) + self.hook("request", flow)

    def answer(self, flow, body, status=200, content_type="application/json") -> list:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        flow.response = tutils.tresp(
            status_code=status, headers=((b"content-type", content_type.encode()),), content=content
        )
        return self.hook("responseheaders", flow) + self.hook("response", flow)

    def x(self, flow):
        return self.s.exchanges.get(flow)


@contextlib.contextmanager
def iron(**options) -> Iterator[Iron]:
    services = Services()
    chain = make_parts(services)
    with taddons.context(*chain) as tctx:
        ir = Iron(services, tctx, chain)
        ir.configure(**SETUP, **options)
        try:
            yield ir
        finally:
            ir.lifecycle("done")  # the control link and the outbox


def request(path="/v1/chat/completions", body=CHAT, method="POST", headers=AUTH):
    flow = tflow.tflow()
    content = json.dumps(body).encode() if body is not None else b""
    flow.request = tutils.treq(method=method.encode(), path=path.encode(), content=content)
    flow.request.headers.clear()
    flow.request.headers.update(headers)
    if body is not None:
        flow.request.headers["content-type"] = "application/json"
    return flow


def error_of(flow) -> dict:
    return json.loads(flow.response.content)["error"]


# -- Pricing ---------------------------------------------------------------------------------


def test_price_file_replaces_the_table_and_prices_a_model_only_it_knows(tmp_path):
    prices = tmp_path / "prices.json"
    row = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "max_output_tokens": 100}
    prices.write_text(json.dumps({"acme-llm-1": row}))
    with iron(iron_budget="1") as ir:
        builtin = ir.s.prices
        assert builtin.lookup("acme-llm-1") is None
        ir.tctx.configure(ir.pricing, iron_pricing=str(prices))
        assert ir.s.prices is not builtin
        assert ir.s.prices.lookup("acme-llm-1").input == 1_000_000  # µ$ per million tokens
        assert ir.s.prices.lookup("gpt-4o") is not None  # merged over the built-in table
        flow = request(body={**CHAT, "model": "acme-llm-1"})
        assert ir.send(flow) == []
        x = ir.x(flow)
        assert flow.response is None
        assert x.reservation.amount == x.input_estimate * 1 + 10 * 2  # the file's rates


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", None])
def test_an_unreadable_price_file_is_an_options_error(tmp_path, content):
    prices = tmp_path / "prices.json"
    if content is not None:
        prices.write_text(content)
    with iron() as ir:
        with pytest.raises(exceptions.OptionsError, match="price file"):
            ir.tctx.configure(ir.pricing, iron_pricing=str(prices))


# -- Control ---------------------------------------------------------------------------------


def test_control_refuses_a_negative_cache_ttl_and_a_server_url_that_is_not_http():
    with iron() as ir:
        with pytest.raises(exceptions.OptionsError, match="iron_cache_ttl"):
            ir.tctx.configure(ir.control, iron_cache_ttl=-1)
        with pytest.raises(exceptions.OptionsError, match="http"):
            ir.tctx.configure(ir.control, iron_server_url="ftp://control.test")
        ir.tctx.configure(ir.control, iron_cache_ttl=0)


def test_without_a_server_url_the_link_stays_idle():
    with iron(iron_lease=True, iron_server_keys=True) as ir:
        ir.control.running()
        link = ir.s.link
        assert link.started.done() and link.started.result() is None
        assert not link.lease_pending()
        assert link.server is None and link.keys is None and link.granted() is None


# -- Admin -----------------------------------------------------------------------------------


def admin(path, secret=SECRET, method="GET", body=None):
    return request(path, body, method, {"x-iron-admin-secret": secret} if secret else {})


@pytest.mark.parametrize("secret", [None, "wrong-secret-0123456789"])
def test_admin_paths_answer_404_without_the_secret(secret):
    with iron(iron_admin_secret=SECRET) as ir:
        flow = admin("/_iron/status", secret)
        ir.send(flow)
        assert flow.response.status_code == 404
        assert error_of(flow)["code"] == "not_found"
        assert ir.x(flow).local == "admin"


def test_admin_status_reports_the_ledger_and_forgets_the_secret():
    with iron(iron_admin_secret=SECRET, iron_budget="2") as ir:
        ir.s.ledger.reserve(1234)
        flow = admin("/_iron/status")
        ir.send(flow)
        assert flow.response.status_code == 200
        status = json.loads(flow.response.content)
        figures = dict(spent_micros=0, reserved_micros=1234, limit_micros=2_000_000, refused=0)
        assert status["budget"] == figures == ir.s.ledger.report()
        assert SECRET not in str(flow.get_state())


def test_admin_budget_sets_the_ledgers_limit():
    with iron(iron_admin_secret=SECRET) as ir:
        flow = admin("/_iron/budget", method="POST", body={"limit_usd": 0.5})
        ir.send(flow)
        assert ir.s.ledger.limit == 500_000
        assert json.loads(flow.response.content)["budget"]["limit_micros"] == 500_000
        flow = admin("/_iron/budget", method="POST", body={"limit_usd": None})
        ir.send(flow)
        assert flow.response.status_code == 200 and ir.s.ledger.limit is None
        flow = admin("/_iron/budget", method="POST", body={"limit_usd": -1})
        ir.send(flow)
        assert flow.response.status_code == 400 and ir.s.ledger.limit is None


def test_admin_budget_refuses_an_infinite_limit_with_400():
    with iron(iron_admin_secret=SECRET) as ir:
        flow = admin("/_iron/budget", method="POST")
        flow.request.content = b'{"limit_usd": Infinity}'
        ir.send(flow)
        assert flow.response.status_code == 400


def test_admin_stats_reads_the_recorder(tmp_path):
    with iron(iron_admin_secret=SECRET, iron_state_dir=str(tmp_path)) as ir:
        flow = admin("/_iron/stats")
        ir.send(flow)
        stats = json.loads(flow.response.content)
        assert (stats["totals"]["requests"], stats["outbox"]["pending"]) == (0, 0)
        assert stats["outbox"]["writer"]["committed"] == 0


# -- Router ----------------------------------------------------------------------------------


def test_requestheaders_creates_the_exchange_and_masks_the_token():
    with iron(iron_token="agent-token-abcdef") as ir:
        flow = request(headers={"x-api-key": "agent-token-abcdef"})
        ir.router.requestheaders(flow)
        assert ir.x(flow).authenticated is True
        assert flow.request.headers["x-api-key"] == "age…cdef"
        assert "agent-token-abcdef" not in str(flow.get_state())


def test_a_request_is_routed_with_a_placeholder_never_the_key():
    with iron() as ir:
        gpt, claude = request(), request("/anthropic/v1/messages", CLAUDE_CHAT)
        assert ir.send(gpt) == ir.send(claude) == []
        assert gpt.request.url == "https://openai.test:8443/base/v1/chat/completions"
        assert gpt.request.headers["authorization"] == "Bearer sk-…1234"
        summary = claude.metadata["iron"]
        route = ("anthropic", "claude-haiku-4-5", "prefix", "/v1/messages")
        assert (summary["provider"], summary["model"], summary["route"], summary["path"]) == route
        assert claude.request.url == "http://anthropic.test:9002/v1/messages"
        assert claude.request.headers["x-api-key"] == "sk-…5678"
        assert claude.request.headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in claude.request.headers
        for flow in (gpt, claude):
            state = str(flow.get_state())
            assert flow.response is None
            assert OPENAI_KEY not in state and ANTHROPIC_KEY not in state


def test_health_check_answers_without_a_token():
    with iron() as ir:
        flow = request("/", body=None, method="GET", headers={})
        ir.send(flow)
        assert (flow.response.status_code, flow.response.content) == (200, b"LlmRouter OK")
        assert flow.response.headers["x-iron-request-id"] == ir.x(flow).request_id
        assert ir.x(flow).local == "health"


def test_a_wrong_token_on_messages_is_a_401_in_anthropic_shape():
    with iron() as ir:
        headers = {"x-api-key": "wrong-token-0123456789", "anthropic-version": "2023-06-01"}
        flow = request("/v1/messages", body=CLAUDE_CHAT, headers=headers)
        ir.send(flow)
        assert flow.response.status_code == 401
        body = json.loads(flow.response.content)
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        assert ir.x(flow).upstream is None  # never routed
        assert "wrong-token-0123456789" not in str(flow.get_state())


def test_an_sse_answer_gets_a_stream_function_and_the_request_id():
    with iron() as ir:
        flow = request(body={**CHAT, "stream": True})
        ir.send(flow)
        assert json.loads(flow.request.content)["stream_options"] == {"include_usage": True}
        flow.response = tutils.tresp(headers=((b"content-type", b"text/event-stream"),))
        ir.hook("responseheaders", flow)
        assert flow.response.headers["x-iron-request-id"] == ir.x(flow).request_id
        feed = flow.response.stream
        assert callable(feed) and ir.x(flow).stream
        delta = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
        usage = b'data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":2}}\n\n'
        assert feed(delta) == delta
        assert feed(usage) == []  # asked for by the router, not by the client
        assert feed(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
        assert feed(b"") == []
        ir.hook("response", flow)
        assert ir.s.ledger.status() == (8 * 25 // 10 + 2 * 10, 0, None)
        assert flow.metadata["iron"]["usage"]["output"] == 2


def test_the_error_hook_records_a_connection_error():
    with iron() as ir:
        flow = request()
        ir.send(flow)
        flow.error = tflow.terr("connection refused")
        ir.router.error(flow)
        err = ir.x(flow).error
        assert (err.status, err.code) == (502, "connection_error")
        assert err.message == "connection refused"


# -- Gateway ---------------------------------------------------------------------------------


def test_openai_chat_for_claude_is_rewritten_to_anthropic_messages():
    with iron() as ir:
        messages = [{"role": "system", "content": "be brief"}, *CHAT["messages"]]
        body = {**CLAUDE_CHAT, "messages": messages, "frequency_penalty": 0.5}
        flow = request(body=body, headers={"authorization": "Bearer direct", "openai-beta": "x"})
        ir.send(flow)
        assert flow.request.url == "http://anthropic.test:9002/v1/messages"
        assert json.loads(flow.request.content) == {
            "model": "claude-haiku-4-5",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "system": "be brief",
        }
        assert flow.request.headers["x-api-key"] == "sk-…5678"
        assert "openai-beta" not in flow.request.headers
        summary = ir.x(flow).summary()
        assert summary["translated"] and summary["dropped_fields"] == ["frequency_penalty"]


def test_an_anthropic_answer_is_translated_back_to_a_chat_completion():
    with iron() as ir:
        flow = request(body=CLAUDE_CHAT)
        ir.send(flow)
        ir.answer(flow, ANTHROPIC_ANSWER)
        answer = json.loads(flow.response.content)
        assert answer["object"] == "chat.completion"
        assert answer["model"] == ANTHROPIC_ANSWER["model"]
        assert answer["choices"][0]["message"]["content"] == "Hello!"
        assert answer["choices"][0]["finish_reason"] == "stop"
        usage = answer["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (12, 5)
        assert flow.metadata["iron"]["cost_micros"] == 12 * 1 + 5 * 5  # haiku 4.5: $1 / $5


def test_an_unreadable_anthropic_answer_is_a_502_in_openai_shape():
    with iron() as ir:
        flow = request(body=CLAUDE_CHAT)
        ir.send(flow)
        ir.answer(flow, b"<html>Bad Gateway</html>", content_type="text/html")
        assert flow.response.status_code == 502
        err = error_of(flow)
        assert (err["type"], err["code"]) == ("iron_cage_upstream_error", "upstream_error")
        assert ir.s.ledger.status() == (0, 0, None)  # the reservation ended


# -- Budget ----------------------------------------------------------------------------------


def test_a_reservation_is_settled_from_the_answers_usage():
    with iron(iron_budget="1") as ir:
        flow = request()
        assert ir.send(flow) == []
        assert ir.s.ledger.status() == (0, CHAT_WORST_CASE, 1_000_000)
        assert ir.x(flow).summary()["reservation_micros"] == CHAT_WORST_CASE
        ir.answer(flow, OPENAI_ANSWER)
        assert ir.s.ledger.status() == (CHAT_COST, 0, 1_000_000)
        assert flow.response.headers["x-iron-cost-usd"] == "0.000050"
        usage = flow.metadata["iron"]["usage"]
        assert usage == {"input": 8, "output": 3, "cache_read": 0, "cache_write": 0}


def test_an_error_status_releases_the_reservation_without_charge():
    with iron(iron_budget="1") as ir:
        flow = request()
        ir.send(flow)
        ir.answer(flow, {"error": {"message": "Rate limit reached", "type": "requests"}}, 429)
        assert ir.s.ledger.status() == (0, 0, 1_000_000)
        assert "x-iron-cost-usd" not in flow.response.headers


@pytest.mark.parametrize("reached, spent", [(True, CHAT_WORST_CASE), (False, 0)])
def test_a_broken_connection_charges_the_worst_case_only_once_the_provider_had_it(reached, spent):
    with iron(iron_budget="1") as ir:
        flow = request()
        ir.send(flow)
        flow.server_conn.timestamp_tcp_setup = time.time() if reached else None
        flow.error = tflow.terr("connection reset")
        ir.hook("error", flow)
        assert ir.s.ledger.status() == (spent, 0, 1_000_000)
        assert ir.x(flow).cost_estimated is reached


def test_an_unpriced_model_under_a_budget_is_402():
    with iron(iron_budget="1") as ir:
        flow = request(body={**CHAT, "model": "acme-private-llm"})
        ir.send(flow)
        assert flow.response.status_code == 402
        err = error_of(flow)
        assert (err["type"], err["code"]) == ("iron_cage_unpriced_model", "unpriced_model")
        ir.configure(iron_budget="")
        flow = request(body={**CHAT, "model": "acme-private-llm"})
        ir.send(flow)
        assert flow.response is None and ir.x(flow).cost_known is False


@pytest.mark.parametrize(
    "budget, code", [("0.0001", "insufficient_budget"), ("0", "budget_exceeded")]
)
def test_a_request_that_does_not_fit_the_budget_is_402(budget, code):
    with iron(iron_budget=budget) as ir:
        flow = request()
        ir.send(flow)
        assert flow.response.status_code == 402 and error_of(flow)["code"] == code
        assert ir.s.ledger.report()["refused"] == 1
        assert ir.s.ledger.status()[:2] == (0, 0)


def test_a_flow_in_flight_shows_its_translation_and_reservation():
    with iron(iron_budget="1") as ir:
        flow = request(body=CLAUDE_CHAT)
        ir.send(flow)
        assert flow.response is None
        assert flow.metadata["iron"]["translated"] is True
        assert flow.metadata["iron"]["reservation_micros"] == ir.x(flow).reservation.amount


# -- Analytics -------------------------------------------------------------------------------


def test_analytics_records_exactly_one_event_per_api_exchange(tmp_path):
    async def scenario() -> dict[str, str]:
        with iron(iron_state_dir=str(tmp_path), iron_admin_secret=SECRET) as ir:
            ir.lifecycle("running")
            ok = request()
            ir.send(ok)
            pending = ir.answer(ok, OPENAI_ANSWER)
            assert len(pending) == 1
            await asyncio.gather(*pending)  # committed before the response completes
            outbox = ir.s.recorder.outbox
            assert outbox.stats()["totals"]["requests"] == 1
            assert ir.analytics.response(ok) is None  # a second call records nothing
            summary = ok.metadata["iron"]
            assert (summary["status"], summary["cost_micros"]) == (200, CHAT_COST)
            assert summary["latency_ms"] >= 0 and summary["usage"]["output"] == 3

            refused = request(headers={"authorization": "Bearer wrong-token-0123456789"})
            ir.send(refused)
            await asyncio.gather(*ir.hook("response", refused))
            broken = request()
            ir.send(broken)
            broken.error = tflow.terr("connection reset")
            ir.hook("error", broken)
            assert broken.metadata["iron"]["error"]["code"] == "connection_error"
            for local in (request("/", None, "GET", {}), admin("/_iron/status")):
                ir.send(local)
                assert local.response.status_code == 200
                assert ir.hook("response", local) == []
            flows = {"ok": ok, "401": refused, "broken": broken}
            return {ir.x(f).request_id: name for name, f in flows.items()}

    ids = asyncio.run(scenario())
    with contextlib.closing(sqlite3.connect(tmp_path / "analytics.sqlite3")) as db:
        rows = [json.loads(b) for (b,) in db.execute("SELECT body FROM events")]
    by_name = {ids[r["request_id"]]: r for r in rows}
    assert len(rows) == 3 and set(by_name) == {"ok", "401", "broken"}
    assert by_name["ok"]["event_type"] == "llm_request_completed"
    assert (by_name["ok"]["input_tokens"], by_name["ok"]["cost_micros"]) == (8, CHAT_COST)
    assert (by_name["401"]["status"], by_name["401"]["error_code"]) == (401, "invalid_api_key")
    assert by_name["broken"]["error_code"] == "connection_error"


# -- Iron: the one addon mitmproxy sees, handing each event to the parts in order -------------


def test_iron_runs_the_parts_in_order_awaits_each_and_survives_a_failing_one():
    from iron_runtime.addons.iron import _run

    calls = []

    def failing(flow):
        calls.append("failing")
        raise RuntimeError("a bug in one part")

    async def waits(flow):
        await asyncio.sleep(0.01)
        calls.append("waited")

    def last(flow):
        calls.append("last")

    def sync_only(flow):
        calls.append("sync")

    assert _run([sync_only, failing, sync_only], object()) is None
    assert calls == ["sync", "failing", "sync"]
    calls.clear()
    pending = _run([failing, waits, last], object())
    assert calls == ["failing"]  # the rest runs only once the awaitable is done
    asyncio.run(pending)
    assert calls == ["failing", "waited", "last"]


def test_iron_is_one_addon_with_every_option_and_the_parts_share_its_services():
    from iron_runtime.addons.iron import Iron, make_addons
    from iron_runtime.settings import SETTINGS

    (addon,) = make_addons()
    assert isinstance(addon, Iron) and addon.name == "iron"
    with taddons.context(addon) as tctx:
        tctx.configure(addon, iron_budget="2", **SETUP)
        assert {s.name for s in SETTINGS} <= set(tctx.options.keys())
        assert addon.s.ledger.limit == 2_000_000
        assert all(p.s is addon.s for p in addon.parts if hasattr(p, "s"))
        flow = request()
        addon.requestheaders(flow)
        addon.request(flow)
        x = addon.s.exchanges.get(flow)
        assert x.reservation is not None and flow.request.host == "openai.test"


def test_requests_in_flight_when_the_router_stops_are_settled_and_recorded(tmp_path):
    from iron_runtime.addons.iron import Iron

    addon = Iron()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, iron_budget="1", iron_state_dir=str(tmp_path), **SETUP)
        flow = request()  # forwarded, waiting for the provider: then Ctrl-C
        addon.requestheaders(flow)
        addon.request(flow)
        assert addon.s.ledger.status()[1] == CHAT_WORST_CASE
        addon.done()
    assert addon.s.ledger.status()[:2] == (CHAT_WORST_CASE, 0)  # the provider may bill it
    with sqlite3.connect(tmp_path / "analytics.sqlite3") as db:
        (body,) = [json.loads(b) for (b,) in db.execute("SELECT body FROM events")]
    assert body["event_type"] == "llm_request_failed" and body["error_code"] == "connection_error"
    assert body["request_id"] == addon.s.exchanges.get(flow).request_id
    assert body["cost_micros"] == CHAT_WORST_CASE


def test_mitmproxy_skips_its_debug_type_checks_once_the_addons_are_made():
    from mitmproxy import http

    from iron_runtime.addons import lean
    from iron_runtime.addons.iron import make_addons

    make_addons()
    assert http.MessageData.__post_init__ is lean._unchecked
    # messages are built as before; a field of the wrong type is no longer checked
    assert http.Request.make("GET", "http://example.test/x").path == "/x"
    assert http.Response.make(200, b"ok").content == b"ok"
