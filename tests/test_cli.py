"""The command line: run, serve, stats, demo."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import pytest

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
        banner = [proc.stdout.readline().rstrip() for _ in range(4)]
        assert banner == [
            f"  state folder    {tmp_path}",
            f"  upstreams       openai {openai_emu.url}, anthropic {anthropic_emu.url}",
            "  control server  none (direct mode: local keys, analytics kept here)",
            "Point your agent at it:",
        ]
        exports = [proc.stdout.readline().strip() for _ in range(4)]
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
    assert "stopped.\nthis session:" in rest and "gpt-4o" in rest
    assert f"state folder {tmp_path}, all sessions: 1 requests" in rest

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
    assert out.returncode == 1
    assert (
        out.stderr
        == f"iron-runtime stats: no analytics in {tmp_path / 'none'} (nothing recorded yet)\n"
    )


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


# -- one-line errors ---------------------------------------------------------------------------

NO_KEYS = {"OPENAI_API_KEY": None, "ANTHROPIC_API_KEY": None}
KEY = {"OPENAI_API_KEY": "sk-test-key", "ANTHROPIC_API_KEY": None}


def _closed_port() -> int:
    """A port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (argv, environment changes, the start of the line after "iron-runtime <command>: ")
BAD = [
    (["run", "--", "true"], NO_KEYS, "no provider key: set OPENAI_API_KEY"),
    (["serve"], NO_KEYS, "no provider key: set OPENAI_API_KEY"),
    (["serve", "--token", "t"], NO_KEYS, "no provider key"),
    (["run"], KEY, "give the agent's command after --"),
    (["serve", "--budget", "abc"], KEY, "argument --budget: must be a number of US dollars"),
    (["run", "--budget", "-1", "--", "true"], KEY, "argument --budget: must be a number"),
    (["serve"], {**KEY, "IRON_BUDGET": "lots"}, "argument --budget: must be a number"),
    (["serve", "--port", "99999"], KEY, "argument --port: must be a port number from 0"),
    (["serve", "--port", "http"], KEY, "argument --port: must be a port number from 0"),
    (["serve", "--cache-ttl", "-5"], KEY, "argument --cache-ttl: must be a whole number"),
    (["run", "--sync-interval", "0", "--", "true"], KEY, "argument --sync-interval: must be"),
    (["serve", "--frobnicate"], KEY, "unrecognized arguments: --frobnicate"),
    (["serve", "--openai-base-url", "ftp://x"], KEY, "upstream URL must be http(s)://"),
    (["serve", "--pricing", "/no/such/prices.json"], KEY, "price file /no/such/prices.json"),
    (["serve", "--server-url", "nowhere", "--token", "t"], NO_KEYS, "--server-url must be"),
    (
        ["serve", "--server-url", "http://127.0.0.1:{closed}", "--token", "ic_t"],
        NO_KEYS,
        "cannot reach the Iron Cage server at http://127.0.0.1:",
    ),
    (
        ["run", "--server-url", "http://127.0.0.1:{closed}", "--token", "ic_t", "--", "true"],
        NO_KEYS,
        "cannot reach the Iron Cage server",
    ),
    (["serve", "--state-dir", "{file}/state"], KEY, "state folder {file}/state is not writable"),
    (["run", "--state-dir", "{file}", "--", "true"], KEY, "state folder {file} is not writable"),
    (["serve", "--port", "{busy}"], KEY, "cannot listen on 127.0.0.1 port {busy}"),
    (["run", "--port", "{busy}", "--", "true"], KEY, "cannot listen on 127.0.0.1 port"),
    (["stats", "--since", "yesterday"], {}, "argument --since: must be a duration such as 30m"),
    (["stats", "--by", "week"], {}, "argument --by: invalid choice: 'week'"),
    (["stats", "--recent", "many"], {}, "argument --recent: must be a whole number"),
    (["stats", "--state-dir", "{garbage}"], {}, "cannot read {garbage}/analytics.sqlite3"),
    (["demo", "--fast"], {}, "unrecognized arguments: --fast"),
]


@pytest.mark.parametrize(("argv", "changes", "expected"), BAD)
def test_bad_arguments_and_environment_are_one_line_and_exit_2(tmp_path, argv, changes, expected):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "analytics.sqlite3").write_bytes(b"this is not a database" * 100)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    fill = {
        "closed": _closed_port(),
        "file": a_file,
        "busy": busy.getsockname()[1],
        "garbage": garbage,
    }
    env = {**os.environ, "IRON_STATE_DIR": str(tmp_path / "state")}
    env = {k: v for k, v in {**env, **changes}.items() if v is not None}
    for name in [k for k in env if k.startswith("IRON_") and k not in changes]:
        if name != "IRON_STATE_DIR":
            del env[name]
    try:
        out = subprocess.run(
            [*CLI, *(a.format(**fill) for a in argv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    finally:
        busy.close()
    assert "Traceback" not in out.stderr + out.stdout
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"iron-runtime {argv[0]}: {expected.format(**fill)}"), line


def test_unknown_or_missing_command_is_one_line():
    for argv, expected in (
        (["launch"], "iron-runtime: argument command: invalid choice: 'launch'"),
        ([], "iron-runtime: the following arguments are required: command"),
    ):
        out = subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        (line,) = out.stderr.splitlines()
        assert line.startswith(expected) and line.endswith("(see iron-runtime --help)"), line


def test_version():
    from iron_runtime import __version__

    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout == f"iron-runtime {__version__}\n"


# -- per-session figures -----------------------------------------------------------------------

ASKER = textwrap.dedent("""
    import sys, openai
    gpt = openai.OpenAI(max_retries=0)
    model, times = sys.argv[1], int(sys.argv[2])
    for _ in range(times):
        gpt.chat.completions.create(model=model, max_tokens=20,
                                    messages=[{"role": "user", "content": "count me"}])
""")


def _run_asker(openai_emu, anthropic_emu, state, agent, model, times, *flags):
    return subprocess.run(
        [*CLI, "run", *flags, "--", sys.executable, str(agent), model, str(times)],
        env=env_for(openai_emu, anthropic_emu, state),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _table(stderr: str) -> dict[str, list[str]]:
    """The rows of the summary table after 'this run:', by first cell."""
    lines = stderr.split("this run:\n", 1)[1].splitlines()
    return {ln.split()[0]: ln.split()[1:] for ln in lines[:-1] if not ln.startswith("-")}


def test_two_runs_on_one_state_folder_each_print_only_their_own(
    openai_emu, anthropic_emu, tmp_path
):
    agent = tmp_path / "asker.py"
    agent.write_text(ASKER)
    state = tmp_path / "state"
    first = _run_asker(openai_emu, anthropic_emu, state, agent, "gpt-4o-mini", 2)
    second = _run_asker(openai_emu, anthropic_emu, state, agent, "gpt-4o", 1)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr

    one, two = _table(first.stderr), _table(second.stderr)
    assert set(one) == {"model", "gpt-4o-mini", "total"}
    assert one["total"][0] == "2"
    assert set(two) == {"model", "gpt-4o", "total"}  # nothing of the first run
    assert two["total"][0] == "1"
    assert first.stderr.rstrip().endswith(
        f"state folder {state}, all sessions: 2 requests, "
        + one["total"][-1]
        + " (iron-runtime stats)"
    )
    assert f"state folder {state}, all sessions: 3 requests, " in second.stderr

    # the costs as the outbox counts them, to the micro-dollar: never $0.0000
    data = json.loads(
        subprocess.run(
            [*CLI, "stats", "--state-dir", str(state), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
    mini = data["by_model"]["gpt-4o-mini"]["cost_micros"]
    assert 0 < mini < 100  # a small cost: it would read $0.0000 at four decimals
    assert one["gpt-4o-mini"][-1] == f"${mini / 1e6:.6f}".rstrip("0")


def test_run_json_summary(openai_emu, anthropic_emu, tmp_path):
    agent = tmp_path / "asker.py"
    agent.write_text(ASKER)
    out = _run_asker(openai_emu, anthropic_emu, tmp_path, agent, "gpt-4o", 2, "--json")
    assert out.returncode == 0, out.stderr
    text = out.stderr.split("agent exited with 0\n", 1)[1]
    summary = json.loads(text)
    assert summary["exit_code"] == 0
    assert summary["state_dir"] == str(tmp_path)
    assert summary["session"]["totals"]["requests"] == 2
    assert summary["session"]["by_model"]["gpt-4o"]["requests"] == 2
    assert summary["cumulative"]["requests"] == 2


def test_stats_since_by_and_json(openai_emu, anthropic_emu, tmp_path):
    agent = tmp_path / "asker.py"
    agent.write_text(ASKER)
    out = _run_asker(openai_emu, anthropic_emu, tmp_path, agent, "gpt-4o", 2)
    assert out.returncode == 0, out.stderr

    def stats(*flags):
        return subprocess.run(
            [*CLI, "stats", "--state-dir", str(tmp_path), *flags],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    assert json.loads(stats("--since", "1h", "--json"))["totals"]["requests"] == 2
    later = json.loads(stats("--since", "2999-01-01", "--json"))
    assert later["totals"]["requests"] == 0 and later["recent"] == []
    assert later["outbox"]["pending"] + later["outbox"]["sent"] == 2  # the outbox: every event
    everything = json.loads(stats("--json"))
    days = {
        time.strftime("%Y-%m-%d", time.localtime(e["timestamp_ms"] / 1000))
        for e in everything["recent"]
    }
    (today,) = days
    assert everything["by_day"] == {today: everything["totals"]}
    table = stats("--by", "provider").splitlines()
    assert table[1].split()[:2] == ["provider", "requests"]
    assert table[3].split()[:2] == ["openai", "2"]
    table = stats("--by", "day", "--since", "7d").splitlines()
    assert "since" in table[0]
    assert table[1].split()[0] == "day"
    assert table[3].split()[:2] == [today, "2"]


def test_costs_print_to_the_micro_dollar():
    from iron_runtime.budget import usd as usd_text

    assert usd_text(96) == "$0.000096"
    assert usd_text(0) == "$0.00"
    assert usd_text(90_000) == "$0.09"
    assert usd_text(1_234_567) == "$1.234567"
    assert usd_text(12_345_000_000) == "$12,345.00"
