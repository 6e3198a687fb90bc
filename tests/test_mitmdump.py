"""The same addons under plain ``mitmdump -s addons/iron.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from mitmproxy import io as mitm_io

from .conftest import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).parent / "mitmdump"
_mitmdumps: list[subprocess.Popen] = []


@pytest.fixture
def mitmdump(openai_emu, anthropic_emu, tmp_path):
    port = free_port()
    flows = tmp_path / "flows.mitm"
    env = {**os.environ, "EMU_OPENAI_KEY": openai_emu.api_key}
    proc = subprocess.Popen(
        [
            str(MITMDUMP),
            "-q",
            "-s",
            str(ROOT / "addons" / "iron.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--set",
            f"confdir={tmp_path / 'certs'}",
            "--set",
            "iron_token=agent-token",
            "--set",
            "iron_openai_key=env:EMU_OPENAI_KEY",
            "--set",
            f"iron_anthropic_key={anthropic_emu.api_key}",
            "--set",
            f"iron_openai_upstream={openai_emu.url}",
            "--set",
            f"iron_anthropic_upstream={anthropic_emu.url}",
            "-w",
            str(flows),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_serving(proc, port, "mitmdump")
    _mitmdumps.append(proc)
    yield port, flows
    proc.terminate()
    proc.wait(10)
    _mitmdumps.remove(proc)


def test_mitmdump_serves_both_providers_and_never_stores_the_real_key(
    mitmdump, openai_emu, anthropic_emu
):
    import anthropic

    port, flows = mitmdump
    base = f"http://127.0.0.1:{port}/v1"
    oai = openai.OpenAI(base_url=base, api_key="agent-token", max_retries=0)
    reply = oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "via mitmdump"}]
    )
    assert reply.choices[0].message.content == "Echo: via mitmdump"
    assert openai_emu.requests[-1].headers["authorization"] == f"Bearer {openai_emu.api_key}"
    claude = anthropic.Anthropic(base_url=base, api_key="agent-token", max_retries=0)
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "streamed"}]
    ) as s:
        assert "".join(s.text_stream) == "Echo: streamed"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="direct", max_retries=0).models.list()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(flows, "rb") as f:
            stored = [
                fl
                for fl in mitm_io.FlowReader(f).stream()
                if "provider" in fl.metadata.get("iron", {})
            ]
        if len(stored) >= 2:
            break
        time.sleep(0.1)
    raw = flows.read_bytes()
    assert openai_emu.api_key.encode() not in raw
    assert anthropic_emu.api_key.encode() not in raw
    assert [f.metadata["iron"]["provider"] for f in stored[:2]] == ["openai", "anthropic"]
    assert stored[0].request.headers["authorization"].startswith("Bearer sk-…")


def test_mitmdump_refuses_to_expose_the_default_token(tmp_path):
    if not shutil.which(str(MITMDUMP)):
        pytest.skip("mitmdump not installed next to this Python")
    out = subprocess.run(
        [
            str(MITMDUMP),
            "-s",
            str(ROOT / "addons" / "iron.py"),
            "--listen-host",
            "0.0.0.0",
            "--listen-port",
            str(free_port()),
            "--set",
            f"confdir={tmp_path}",
            "--set",
            "iron_provider_key=sk-x",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "Refusing to listen on 0.0.0.0 with the default token" in out.stdout + out.stderr


def test_flow_in_flight_at_shutdown_is_dumped_without_the_key(mitmdump, openai_emu):
    import threading

    from iron_runtime.testing import Fault

    port, flows = mitmdump
    openai_emu.inject(Fault(delay=10))

    def call():
        httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            timeout=20,
            headers={"authorization": "Bearer agent-token"},
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        )

    t = threading.Thread(target=lambda: _ignore(call), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while not openai_emu.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert openai_emu.requests  # the request is upstream, waiting for its answer
    time.sleep(0.5)
    proc = next(p for p in _mitmdumps if p.poll() is None)
    proc.terminate()  # mitmdump -w writes the flows still in flight when it stops
    proc.wait(10)
    with open(flows, "rb") as f:
        stored = list(mitm_io.FlowReader(f).stream())
    in_flight = [fl for fl in stored if fl.request.path == "/v1/chat/completions"]
    assert in_flight and in_flight[0].response is None
    assert openai_emu.api_key.encode() not in flows.read_bytes()
    assert in_flight[0].request.headers["authorization"].startswith("Bearer sk-…")


def _ignore(call):
    try:
        call()
    except Exception:
        pass
