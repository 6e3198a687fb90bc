"""The command line: run, serve, stats, demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai

CLI = [sys.executable, "-m", "iron_runtime.cli"]

AGENT = textwrap.dedent("""
    import os, sys
    import anthropic, openai
    real = sys.argv[1]
    assert os.environ["OPENAI_API_KEY"] != real, "the agent must not see the real key"
    gpt = openai.OpenAI(max_retries=0)  # OPENAI_BASE_URL and OPENAI_API_KEY from the router
    print(gpt.chat.completions.create(model="gpt-4o-mini", max_tokens=20,
          messages=[{"role": "user", "content": "agent says hi"}]).choices[0].message.content)
    claude = anthropic.Anthropic(max_retries=0)
    print(claude.messages.create(model="claude-haiku-4-5", max_tokens=20,
          messages=[{"role": "user", "content": "agent says hi"}]).content[0].text)
    sys.exit(3)
""")

SPENDER = textwrap.dedent("""
    import time, openai
    gpt = openai.OpenAI(max_retries=0)
    while True:
        try:
            gpt.chat.completions.create(model="gpt-4o", max_tokens=2000,
                                        messages=[{"role": "user", "content": "spend"}])
        except openai.APIStatusError:
            pass
        time.sleep(0.05)
""")


def env_for(openai_emu, anthropic_emu, state):
    return {
        **os.environ,
        "OPENAI_API_KEY": openai_emu.api_key,
        "ANTHROPIC_API_KEY": anthropic_emu.api_key,
        "IRON_OPENAI_BASE_URL": openai_emu.url,
        "IRON_ANTHROPIC_BASE_URL": anthropic_emu.url,
        "IRON_STATE_DIR": str(state),
    }


def test_run_passes_the_exit_code_and_prints_a_spend_summary(openai_emu, anthropic_emu, tmp_path):
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    out = subprocess.run(
        [*CLI, "run", "--", sys.executable, str(agent), openai_emu.api_key],
        env=env_for(openai_emu, anthropic_emu, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines() == ["Echo: agent says hi", "Echo: agent says hi"]
    assert "agent exited with 3" in out.stderr
    assert "gpt-4o-mini" in out.stderr and "claude-haiku-4-5" in out.stderr
    assert "total" in out.stderr
    assert openai_emu.requests[-1].headers["authorization"] == f"Bearer {openai_emu.api_key}"


def test_run_stops_the_agent_when_the_budget_is_spent(openai_emu, anthropic_emu, tmp_path):
    agent = tmp_path / "spender.py"
    agent.write_text(SPENDER)
    openai_emu.reply_text = "word " * 2000
    t0 = time.monotonic()
    out = subprocess.run(
        [*CLI, "run", "--budget", "0.05", "--stop-on-budget", "--", sys.executable, str(agent)],
        env=env_for(openai_emu, anthropic_emu, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - t0 < 60
    assert "stopped: budget spent" in out.stderr
    assert out.returncode == 128 + signal.SIGTERM


def test_serve_until_a_signal_then_stats(openai_emu, anthropic_emu, tmp_path):
    proc = subprocess.Popen(
        [*CLI, "serve", "--token", "serve-token"],
        env=env_for(openai_emu, anthropic_emu, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in first, proc.stderr.read()
        base_url = first.split("listening on ")[1].split()[0]
        exports = [proc.stdout.readline().strip() for _ in range(5)]
        assert f"export OPENAI_BASE_URL={base_url}" in exports
        assert "export OPENAI_API_KEY=serve-token" in exports
        client = openai.OpenAI(base_url=base_url, api_key="serve-token", max_retries=0)
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "served"}]
        )
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped." in rest and "gpt-4o" in rest

    out = subprocess.run(
        [*CLI, "stats", "--state-dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    data = json.loads(out.stdout)
    assert data["totals"]["requests"] == 1 and data["totals"]["cost_micros"] > 0
    assert data["by_model"]["gpt-4o"]["requests"] == 1
    table = subprocess.run(
        [*CLI, "stats", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    ).stdout
    assert "gpt-4o" in table and "recent requests" in table


def test_stats_without_data_says_so(tmp_path):
    out = subprocess.run(
        [*CLI, "stats", "--state-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "no analytics" in out.stderr


def test_demo_completes_within_a_minute(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run(
        [*CLI, "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IRON_STATE_DIR": str(tmp_path)},
        cwd=Path(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - t0 < 60
    assert "tool call #0: get_weather" in out.stdout
    assert "AuthenticationError: 401" in out.stdout


def test_demo_without_the_sdks_names_the_install_command(tmp_path):
    # the SDKs made unimportable, as after a plain `pip install iron-runtime`
    hide = (
        "import sys; sys.modules['anthropic'] = None; "
        "from iron_runtime.cli import main; sys.exit(main(['demo']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", hide], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        "iron-runtime demo needs the OpenAI and Anthropic SDKs ('anthropic' is missing): "
        "pip install 'iron-runtime[demo]'"
    ]
