"""``LlmRouter``: the Python API of the original, in a child process per router."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import openai
import pytest

from iron_runtime import LlmRouter, RouterStartError

from .conftest import free_port, make_router, port_is_open


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_missing_arguments_raise_the_originals_value_error():
    with pytest.raises(
        ValueError,
        match="Either 'provider_key' or both 'api_key' and 'server_url' must be provided",
    ):
        LlmRouter()
    with pytest.raises(ValueError):
        LlmRouter(api_key="ic_token_only")
    with pytest.raises(ValueError):
        LlmRouter(server_url="http://127.0.0.1:1")


def test_bad_extension_arguments_raise_value_error():
    with pytest.raises(ValueError, match="unknown provider"):
        LlmRouter(provider_keys={"mistral": "k"})
    with pytest.raises(ValueError, match="upstream URL"):
        LlmRouter(provider_key="sk-x", upstreams={"openai": "ftp://nowhere"})
    with pytest.raises(ValueError, match="port"):
        LlmRouter(provider_key="sk-x", port=70000)


def test_properties_of_a_direct_mode_router(openai_emu):
    with LlmRouter(provider_key="sk-ant-abc", upstreams={"anthropic": openai_emu.url}) as r:
        assert r.provider == "anthropic"
        assert r.api_key == "direct"
        assert r.base_url == f"http://127.0.0.1:{r.port}/v1"
        assert r.is_running
        assert r.budget is None and r.budget_status is None and r.total_spent() == 0.0
        assert "sk-ant-abc" not in repr(r)
    with LlmRouter(provider_key="sk-proj-xyz", api_key="ic_agent_token") as r:
        assert r.provider == "openai"
        assert r.api_key == "ic_agent_token"


def test_stop_closes_the_port_ends_the_process_and_is_idempotent(openai_emu, anthropic_emu):
    r = make_router(openai_emu, anthropic_emu)
    port, pid = r.port, r.pid
    assert port_is_open(port)
    r.stop()
    assert not port_is_open(port)
    assert _gone(pid, within=1.0)
    assert not r.is_running
    r.stop()  # a second stop does nothing
    for name in ("base_url", "api_key", "port", "provider"):
        with pytest.raises(RuntimeError, match="Router is stopped"):
            getattr(r, name)
    assert r.budget is None and r.budget_status is None


def test_two_routers_route_their_own_traffic(openai_emu, anthropic_emu):
    from iron_runtime.testing import OpenAIEmulator

    with OpenAIEmulator(api_key="sk-second-emulator-key") as other_emu:
        with (
            make_router(openai_emu, anthropic_emu, api_key="token-one") as one,
            LlmRouter(
                provider_key=other_emu.api_key,
                api_key="token-two",
                upstreams={"openai": other_emu.url},
            ) as two,
        ):
            assert one.port != two.port
            c1 = openai.OpenAI(base_url=one.base_url, api_key="token-one", max_retries=0)
            c2 = openai.OpenAI(base_url=two.base_url, api_key="token-two", max_retries=0)
            msgs = [{"role": "user", "content": "x"}]
            for _ in range(3):
                c1.chat.completions.create(model="gpt-4o", messages=msgs)
                c2.chat.completions.create(model="gpt-4o-mini", messages=msgs)
            assert [q.json()["model"] for q in openai_emu.requests] == ["gpt-4o"] * 3
            assert [q.json()["model"] for q in other_emu.requests] == ["gpt-4o-mini"] * 3
            with pytest.raises(openai.AuthenticationError):  # each has its own token
                openai.OpenAI(
                    base_url=two.base_url, api_key="token-one", max_retries=0
                ).models.list()


def test_fixed_port_and_port_in_use(openai_emu):
    port = free_port()
    with LlmRouter(provider_key="sk-x", port=port) as r:
        assert r.port == port
        with pytest.raises(RouterStartError, match="failed to start|exited"):
            LlmRouter(provider_key="sk-x", port=port)


_ORPHAN = textwrap.dedent("""
    import sys, time
    from iron_runtime import LlmRouter
    r = LlmRouter(provider_key="sk-orphan-test")
    print(r.pid, r.port, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
    # "exit": leave without calling stop()
""")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_router_does_not_outlive_its_process(how, tmp_path):
    script = tmp_path / "agent.py"
    script.write_text(_ORPHAN)
    agent = subprocess.Popen(
        [sys.executable, str(script), "hang" if how == "sigkill" else "exit"],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid, port = map(int, agent.stdout.readline().split())
    if how == "sigkill":
        agent.send_signal(signal.SIGKILL)
    agent.wait(30)
    assert _gone(pid), "router process outlived the agent"
    assert not port_is_open(port)


def test_garbage_collected_router_stops(openai_emu, anthropic_emu):
    import gc

    r = make_router(openai_emu, anthropic_emu)
    pid, port = r.pid, r.port
    del r
    gc.collect()
    assert _gone(pid)
    assert not port_is_open(port)


def test_server_mode_without_key_fetching_answers_503():
    with LlmRouter(api_key="ic_token", server_url="http://127.0.0.1:1") as r:
        assert r.provider == "unknown"
        client = openai.OpenAI(base_url=r.base_url, api_key="ic_token", max_retries=0)
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "x"}]
            )
        assert err.value.status_code == 503
        assert err.value.code == "key_unavailable"
