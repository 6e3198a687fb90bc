"""mitmweb with the iron addons: each flow shows its cost and tokens, never the real key.

Checked through mitmweb's own flow API (``GET /flows``, what its web page renders)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
MITMWEB = Path(sys.executable).parent / "mitmweb"


@pytest.fixture
def mitmweb(openai_emu, anthropic_emu, tmp_path):
    port, web_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(MITMWEB),
            "-s",
            str(ROOT / "addons" / "iron.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(web_port),
            "--set",
            "web_open_browser=false",
            "--set",
            "web_password=web-secret",
            "--set",
            f"confdir={tmp_path / 'certs'}",
            "--set",
            "iron_openai_key=env:EMU_OPENAI_KEY",
            "--set",
            f"iron_openai_upstream={openai_emu.url}",
            "--set",
            f"iron_anthropic_upstream={anthropic_emu.url}",
        ],
        env={**os.environ, "EMU_OPENAI_KEY": openai_emu.api_key},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_serving(proc, port, "mitmweb")
    yield port, web_port
    proc.terminate()
    proc.wait(10)


def test_mitmweb_shows_cost_and_tokens_and_never_the_key(mitmweb, openai_emu):
    port, web_port = mitmweb
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="direct", max_retries=0)
    client.chat.completions.create(
        model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": "show me in mitmweb"}]
    )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{web_port}", headers={"authorization": "Bearer web-secret"}
    )
    assert api.get("/flows", headers={"authorization": "Bearer wrong"}).status_code == 403
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        flows = [
            f for f in api.get("/flows").json() if f["request"]["path"] == "/v1/chat/completions"
        ]
        if flows and flows[0].get("response"):
            break
        time.sleep(0.1)
    (flow,) = flows
    assert flow["comment"].startswith("gpt-4o · ")
    assert "→" in flow["comment"] and "tok" in flow["comment"] and "$0.0" in flow["comment"]
    headers = dict(flow["request"]["headers"])
    assert headers["authorization"].startswith("Bearer sk-…")
    everything = api.get("/flows").text + api.get("/options").text
    assert openai_emu.api_key not in everything


def test_the_real_key_is_nowhere_in_mitmweb_at_any_moment_of_a_flow(mitmweb, openai_emu):
    """While a slow provider holds the request, after Duplicate, while intercepted, and in
    the 401 flow of an agent that sent the real key as its token."""
    import threading

    from iron_runtime.testing import Fault

    port, web_port = mitmweb
    key = openai_emu.api_key
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{web_port}", headers={"authorization": "Bearer web-secret"}
    )
    # mitmweb's XSRF check: the same token in a cookie and in a header
    api.cookies.set("_mitmproxy_xsrf", "iron-test-xsrf")
    api.headers["x-xsrftoken"] = "iron-test-xsrf"
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="direct", max_retries=0)

    def everything() -> str:
        return api.get("/flows").text + api.get("/flows/dump").content.decode("latin-1")

    def wait_for(predicate, what: str):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = [f for f in api.get("/flows").json() if predicate(f)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no flow {what}")

    # 1. in flight: the provider takes 2 s to answer
    openai_emu.inject(Fault(delay=2.0))
    done = threading.Event()

    def call() -> None:
        client.chat.completions.create(
            model="gpt-4o", max_tokens=5, messages=[{"role": "user", "content": "slow"}]
        )
        done.set()

    threading.Thread(target=call, daemon=True).start()
    waiting = wait_for(
        lambda f: f["request"]["path"] == "/v1/chat/completions" and not f.get("response"),
        "waiting for the provider",
    )
    assert key not in everything()
    # 2. a duplicate of the in-flight flow
    assert api.post(f"/flows/{waiting['id']}/duplicate").status_code == 200
    assert key not in everything()
    assert done.wait(10)
    assert key not in everything()

    # 3. intercepted
    assert api.put("/options", json={"intercept": "~q & ~u intercept-me"}).status_code == 200
    threading.Thread(
        target=lambda: httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions?intercept-me",
            headers={"authorization": "Bearer direct"},
            json={
                "model": "gpt-4o",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
            timeout=15,
        ),
        daemon=True,
    ).start()
    held = wait_for(lambda f: f.get("intercepted"), "intercepted")
    assert key not in everything()
    api.put("/options", json={"intercept": ""})
    assert api.post(f"/flows/{held['id']}/resume").status_code == 200

    # 4. the real key presented as the agent's token: refused, and masked in the flow
    refused = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]},
    )
    assert refused.status_code == 401
    wait_for(lambda f: (f.get("response") or {}).get("status_code") == 401, "refused")
    assert key not in everything()
