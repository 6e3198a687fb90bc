"""Server mode against the control-server emulator: keys, leases shared by routers, and
analytics that are never lost nor counted twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import openai
import pytest

from iron_runtime import LlmRouter
from iron_runtime.testing import ControlServerEmulator, Fault

from .conftest import wait_for

MSGS = [{"role": "user", "content": "hello server mode"}]


@pytest.fixture
def control():
    with ControlServerEmulator() as emu:
        yield emu


def analytics_router(control, openai_emu, anthropic_emu, token="ic_agent_1", **kw):
    """A direct-mode router that still syncs analytics to the control server."""
    return LlmRouter(
        api_key=token,
        server_url=control.url,
        provider_key=openai_emu.api_key,
        upstreams={"openai": openai_emu.url, "anthropic": anthropic_emu.url},
        budget=1.0,
        sync_interval=kw.pop("sync_interval", 0.2),
        **kw,
    )


def server_router(control, openai_emu, anthropic_emu, token="ic_agent_1", **kw):
    return LlmRouter(
        api_key=token,
        server_url=control.url,
        upstreams={"openai": openai_emu.url, "anthropic": anthropic_emu.url},
        sync_interval=kw.pop("sync_interval", 0.2),
        **kw,
    )


def client(router):
    return openai.OpenAI(base_url=router.base_url, api_key=router.api_key, max_retries=0)


# -- keys ------------------------------------------------------------------------------------


def test_key_is_fetched_once_within_the_ttl(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert r.provider == "openai"
        c = client(r)
        for _ in range(5):
            c.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert control.key_fetches == 1
        assert openai_emu.requests[-1].headers["authorization"] == f"Bearer {openai_emu.api_key}"


def test_concurrent_first_requests_share_one_fetch(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.inject(Fault(status=500, body={"error": "down", "code": "INTERNAL_ERROR"}))
    # budget given: no lease, so only requests fetch keys
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path, budget=1.0) as r:
        assert r.provider == "unknown"  # the start-up fetch failed
        fetches = control.key_fetches
        control.inject(Fault(delay=0.5))  # the shared fetch is slow: all requests wait on it
        errors = []

        def one():
            try:
                client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=50)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert control.key_fetches - fetches == 1
        assert len(openai_emu.requests) == 8


def test_unreachable_server_answers_503_then_recovers(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.go_down()
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert r.provider == "unknown"
        with pytest.raises(openai.APIStatusError) as err:
            client(r).chat.completions.create(model="gpt-4o", messages=MSGS)
        assert err.value.status_code == 503
        assert "could not be reached" in err.value.message
        control.come_up()
        assert wait_for(lambda: _succeeds(r))


def _succeeds(router) -> bool:
    try:
        client(router).chat.completions.create(model="gpt-4o", messages=MSGS)
        return True
    except openai.APIStatusError:
        return False


def test_agent_without_key_for_the_provider_gets_403(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        with pytest.raises(openai.PermissionDeniedError) as err:
            client(r).chat.completions.create(model="claude-haiku-4-5", messages=MSGS)
        assert "for openai" in err.value.message


def test_ip_token_is_decrypted_with_ip_token_key(
    control, openai_emu, anthropic_emu, tmp_path, monkeypatch
):
    control.add_agent("ic_agent_1", "anthropic", anthropic_emu.api_key, 50_000_000, encrypt=True)
    monkeypatch.setenv("IP_TOKEN_KEY", control.ip_token_key.hex())
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert r.provider == "anthropic"
        client(r).chat.completions.create(model="claude-haiku-4-5", messages=MSGS)
        assert anthropic_emu.requests[-1].headers["x-api-key"] == anthropic_emu.api_key


def test_missing_ip_token_key_is_a_clear_error(
    control, openai_emu, anthropic_emu, tmp_path, monkeypatch
):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000, encrypt=True)
    monkeypatch.delenv("IP_TOKEN_KEY", raising=False)
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        with pytest.raises(openai.APIStatusError) as err:
            client(r).chat.completions.create(model="gpt-4o", messages=MSGS)
        assert err.value.status_code == 503
        assert "IP_TOKEN_KEY is not configured" in err.value.message


# -- leases ----------------------------------------------------------------------------------


def test_stop_returns_the_lease_with_what_was_spent(control, openai_emu, anthropic_emu, tmp_path):
    agent = control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    r = server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path)
    assert wait_for(lambda: r.budget is not None)
    assert r.budget == 10.0  # the server's default grant
    for _ in range(3):
        client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=20)
    spent = round(r.total_spent() * 1e6)
    assert spent > 0
    assert wait_for(lambda: sum(len(lz.reports) for lz in control.leases.values()) == 3)
    r.stop()
    (lease,) = control.leases.values()
    assert not lease.open and lease.returned_spent == spent
    assert sum(rep["cost_microdollars"] for rep in lease.reports) == spent
    assert agent.spent == spent and agent.granted == 0


def test_lease_is_refreshed_when_it_runs_low(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.default_grant = 100_000  # $0.10 leases
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert wait_for(lambda: r.budget is not None)
        granted = r.budget
        assert granted == 0.1
        # spend until less than 10 % of the lease is left: expensive answers
        openai_emu.reply_text = "word " * 3000
        for _ in range(40):
            try:
                client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=3000)
            except openai.APIStatusError:
                break
            if r.budget > granted:
                break
        assert wait_for(lambda: r.budget > granted)


def test_three_routers_share_one_agent_budget(control, openai_emu, anthropic_emu, tmp_path):
    agent = control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 120_000)  # $0.12
    control.default_grant = 30_000  # each router holds $0.03 at a time
    openai_emu.reply_text = "word " * 500
    routers = [
        server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path / str(i))
        for i in range(3)
    ]
    try:
        assert wait_for(lambda: all(r.budget is not None for r in routers))
        assert sum(r.budget for r in routers) <= 0.12  # the leases split what the agent has
        outcomes = []

        def spend(r):
            for _ in range(30):
                try:
                    client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=500)
                    outcomes.append("ok")
                except openai.APIStatusError as e:
                    outcomes.append(e.status_code)
                    break

        threads = [threading.Thread(target=spend, args=(r,)) for r in routers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        total = sum(round(r.total_spent() * 1e6) for r in routers)
        assert outcomes.count("ok") >= 1 and 402 in outcomes
    finally:
        for r in routers:
            r.stop()
    assert total <= 120_000
    assert agent.spent == total


# -- analytics -------------------------------------------------------------------------------


def _traffic(router, n):
    c = client(router)
    for i in range(n):
        if i % 5 == 4:
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(
                    base_url=router.base_url, api_key="wrong", max_retries=0
                ).models.list()
        else:
            c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=10)


@pytest.mark.parametrize("fault", ["up", "down_then_up", "half_500"])
def test_every_request_yields_exactly_one_event(
    fault, control, openai_emu, anthropic_emu, tmp_path
):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    r = analytics_router(control, openai_emu, anthropic_emu, state_dir=tmp_path)
    try:
        if fault == "down_then_up":
            control.go_down()
        elif fault == "half_500":
            control.fail_every = 2
        _traffic(r, 20)
        if fault == "down_then_up":
            time.sleep(0.5)
            assert len(control.events) == 0
            control.come_up()
        assert wait_for(lambda: len(control.events) == 20, timeout=30), len(control.events)
        # the server has them all; the worker marks them sent in batches (within 0.5 s)
        assert wait_for(lambda: r.stats()["outbox"]["pending"] == 0, timeout=10)
        stats = r.stats()
        assert stats["totals"]["requests"] == 20 and stats["totals"]["failed"] == 4
    finally:
        r.stop()
    events = list(control.events.values())
    assert len({e["event_id"] for e in events}) == 20
    completed = [e for e in events if e["event_type"] == "llm_request_completed"]
    assert len(completed) == 16
    e = completed[0]
    assert e["ic_token"] == "ic_agent_1" and e["provider"] == "openai" and e["model"] == "gpt-4o"
    assert e["cost_micros"] > 0 and e["input_tokens"] > 0 and e["latency_ms"] >= 0
    failed = [e for e in events if e["event_type"] == "llm_request_failed"]
    assert {e["error_code"] for e in failed} == {"invalid_api_key"}
    assert openai_emu.api_key not in str(events)


def test_events_unsent_at_stop_are_sent_by_the_next_router(
    control, openai_emu, anthropic_emu, tmp_path
):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.go_down()
    r = analytics_router(control, openai_emu, anthropic_emu, state_dir=tmp_path)
    _traffic(r, 6)
    t0 = time.monotonic()
    r.stop()
    assert time.monotonic() - t0 < 15  # the flush has a deadline
    control.come_up()
    r2 = analytics_router(control, openai_emu, anthropic_emu, state_dir=tmp_path)
    try:
        assert wait_for(lambda: len(control.events) == 6)
    finally:
        r2.stop()


_KILLED = textwrap.dedent("""
    import sys, openai
    from iron_runtime import LlmRouter
    server, oai_url, state, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    r = LlmRouter(api_key="ic_agent_1", server_url=server, upstreams={"openai": oai_url},
                  state_dir=state, sync_interval=3600, budget=1.0)
    c = openai.OpenAI(base_url=r.base_url, api_key=r.api_key, max_retries=0)
    for _ in range(n):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                  max_tokens=5)
    print(r.pid, flush=True)
    import time; time.sleep(60)
""")


def test_router_killed_mid_run_loses_no_event(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    script = tmp_path / "agent.py"
    script.write_text(_KILLED)
    state = tmp_path / "state"
    agent = subprocess.Popen(
        [sys.executable, str(script), control.url, openai_emu.url, str(state), "7"],
        stdout=subprocess.PIPE,
        text=True,
    )
    router_pid = int(agent.stdout.readline())
    os.kill(router_pid, signal.SIGKILL)  # no flush, no goodbye
    agent.kill()
    agent.wait(10)
    assert len(control.events) == 0  # the killed router never synced (interval of an hour)
    r2 = server_router(control, openai_emu, anthropic_emu, state_dir=state, budget=1.0)
    try:
        assert wait_for(lambda: len(control.events) == 7)
    finally:
        r2.stop()


# -- regressions from review ---------------------------------------------------------------


def test_set_budget_cannot_raise_a_lease(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.default_grant = 100_000
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert wait_for(lambda: r.budget is not None)
        r.set_budget(5.0)
        assert r.budget == 0.1  # the server's grant is the ceiling
        r.set_budget(None)
        assert r.budget == 0.1
        r.set_budget(0.05)
        assert r.budget == 0.05


def test_a_refusal_asks_the_server_for_more(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 1_000_000)
    control.default_grant = 100_000
    openai_emu.reply_text = "word " * 3000
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert wait_for(lambda: r.budget is not None)
        c = client(r)
        refused = False
        for _ in range(10):
            try:
                c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2000)
            except openai.APIStatusError as e:
                assert e.status_code == 402
                refused = True
                break
        assert refused
        assert wait_for(lambda: r.budget > 0.1)  # refreshed after the refusal
        assert c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=2000)


def test_an_unreadable_handshake_answer_is_retried(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.inject(Fault(status=200, body={"unexpected": True}))
    r = LlmRouter(
        api_key="ic_agent_1",
        server_url=control.url,
        provider_key=openai_emu.api_key,
        upstreams={"openai": openai_emu.url},
        state_dir=tmp_path,
    )
    try:
        assert wait_for(lambda: r.budget is not None)
        assert (
            client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=5).choices
        )
    finally:
        r.stop()


def test_stop_is_bounded_when_the_server_is_slow(control, openai_emu, anthropic_emu, tmp_path):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    r = server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path)
    assert wait_for(lambda: r.budget is not None)
    control.inject(*[Fault(delay=30) for _ in range(50)])  # every call now hangs
    for _ in range(3):
        client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=5)
    proc = r._proc
    t0 = time.monotonic()
    r.stop()
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 0  # it stopped by itself, not killed


# -- start-up: the constructor returns once the first handshake has ended ----------------------


def lease_router(control, openai_emu, tmp_path, **kw):
    """A direct-mode router whose budget is a lease: the handshake is its first server call."""
    return LlmRouter(
        api_key="ic_agent_1",
        server_url=control.url,
        provider_key=openai_emu.api_key,
        upstreams={"openai": openai_emu.url},
        state_dir=tmp_path,
        **kw,
    )


def test_slow_server_lease_is_in_hand_when_the_constructor_returns(
    control, openai_emu, anthropic_emu, tmp_path
):
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.latency = 0.5  # the key fetch and the handshake each take half a second
    with server_router(control, openai_emu, anthropic_emu, state_dir=tmp_path) as r:
        assert r.provider == "openai"  # the key fetch ended before the constructor returned
        assert r.budget_status == (0.0, 10.0)  # and so did the handshake
        reply = client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=5)
        assert reply.choices[0].message.content == "Echo: hello server mode"
        assert len(control.leases) == 1


def test_server_down_router_starts_within_the_bound_and_answers_503(control, openai_emu, tmp_path):
    from iron_runtime.control import STARTUP_WAIT

    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.go_down()
    t0 = time.monotonic()
    r = lease_router(control, openai_emu, tmp_path)
    try:
        assert time.monotonic() - t0 < STARTUP_WAIT + 10
        assert r.budget_status is None
        with pytest.raises(openai.APIStatusError) as err:
            client(r).chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=5)
        assert err.value.status_code == 503
        assert err.value.code == "budget_unavailable"
        assert "No budget lease from the Iron Cage server yet" in err.value.message
        assert "could not be reached for the budget lease" in err.value.message
        assert not openai_emu.requests  # nothing went upstream without a budget
    finally:
        r.stop()


class HeldHandshakes(ControlServerEmulator):
    """The control-server emulator, holding each handshake's answer until ``release()``."""

    def __init__(self) -> None:
        super().__init__()
        self.let_through = 0  # handshakes answered at once before the holding starts
        self.holding = threading.Event()  # a handshake is at the server, unanswered
        self._release = threading.Event()

    def handle(self, request):
        if request.path.startswith("/api/v1/budget/handshake"):
            if self.let_through:
                self.let_through -= 1
            elif not self._release.is_set():
                self.holding.set()
                self._release.wait(30)  # the emulator answers nothing else meanwhile
                self.holding.clear()
        return super().handle(request)

    def release(self) -> None:
        self._release.set()


@pytest.fixture
def held_control():
    emu = HeldHandshakes()
    with emu:
        try:
            yield emu
        finally:
            emu.release()


def _create_in_thread(router, results):
    def call():
        try:
            c = client(router)
            results.append(c.chat.completions.create(model="gpt-4o", messages=MSGS, max_tokens=5))
        except Exception as e:
            results.append(e)

    t = threading.Thread(target=call)
    t.start()
    return t


def test_request_waits_for_a_retry_handshake_in_flight(held_control, openai_emu, tmp_path):
    control = held_control
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    control.let_through = 1  # the first handshake fails at once; the retry is held
    control.inject(Fault(status=500, body={"error": "down", "code": "INTERNAL_ERROR"}))
    r = lease_router(control, openai_emu, tmp_path)
    try:
        assert r.budget_status is None  # the first handshake failed: no lease yet
        assert control.holding.wait(15)  # the retry is at the server, unanswered
        results = []
        t = _create_in_thread(r, results)
        time.sleep(0.5)  # let the request reach the router while the handshake is held
        control.release()
        t.join(30)
        (reply,) = results
        assert not isinstance(reply, Exception), reply
        assert reply.choices[0].message.content == "Echo: hello server mode"
        assert r.budget_status[1] == 10.0
    finally:
        r.stop()


def test_constructor_is_bounded_and_requests_wait_for_the_first_handshake(
    held_control, openai_emu, tmp_path
):
    from iron_runtime.control import STARTUP_WAIT

    control = held_control
    control.add_agent("ic_agent_1", "openai", openai_emu.api_key, 50_000_000)
    t0 = time.monotonic()
    r = lease_router(control, openai_emu, tmp_path)
    try:
        assert time.monotonic() - t0 < STARTUP_WAIT + 10
        # it returned while the server still held the handshake's answer
        assert control.holding.is_set()
        assert r.budget_status is None
        results = []
        t = _create_in_thread(r, results)
        time.sleep(0.5)  # let the request reach the router while the handshake is held
        control.release()
        t.join(30)
        (reply,) = results
        assert not isinstance(reply, Exception), reply
        assert reply.choices[0].message.content == "Echo: hello server mode"
        assert r.budget_status[1] == 10.0
    finally:
        r.stop()
