"""The same addons under plain ``mitmdump -s addons/iron.py``."""

from __future__ import annotations

import json
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

from iron_runtime.settings import SETTINGS

from .conftest import free_port, wait_for, wait_until_serving

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


# -- every iron_* option through `mitmdump --set` -----------------------------------------------

# Loaded after addons/iron.py: at shutdown it writes what the analytics addon runs with, read
# from the addon itself (the sync worker's interval is what paces its passes).
READOUT = """
import json, os
from mitmproxy import ctx

def done():
    iron = ctx.master.addons.get("iron")
    analytics = next(p for p in iron.parts if type(p).__name__ == "Analytics")
    recorder = iron.s.recorder
    sync = recorder.sync
    with open(os.environ["IRON_READOUT"], "w") as f:
        json.dump({"sync_interval": sync.interval if sync else None,
                   "flush_deadline": analytics.flush_deadline,
                   "retention_s": recorder.outbox.retention_s,
                   "keep_pending": recorder.outbox.keep_pending}, f)
"""


def declared_iron_options() -> set[str]:
    return {s.name for s in SETTINGS}


def start_mitmdump(tmp_path, settings: dict[str, str], env: dict[str, str]):
    """mitmdump with the iron addons and the read-out script, every setting given as --set."""
    readout = tmp_path / "readout.py"
    readout.write_text(READOUT)
    port = free_port()
    args = [str(MITMDUMP), "-s", str(ROOT / "addons" / "iron.py"), "-s", str(readout)]
    args += ["--listen-host", "127.0.0.1", "--listen-port", str(port)]
    args += ["--set", f"confdir={tmp_path / 'certs'}"]
    for name, value in settings.items():
        args += ["--set", f"{name}={value}"]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, **env, "IRON_READOUT": str(tmp_path / "readout.json")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_serving(proc, port, "mitmdump")
    return proc, port


def stop_mitmdump(proc) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


DIRECT_OPTIONS = {
    "iron_token",
    "iron_openai_key",
    "iron_anthropic_key",
    "iron_openai_upstream",
    "iron_anthropic_upstream",
    "iron_body_limit",
    "iron_budget",
    "iron_pricing",
    "iron_state_dir",
    "iron_admin_secret",
    "iron_server_url",
    "iron_sync_interval",
    "iron_flush_deadline",
    "iron_retention_days",
}
SERVER_OPTIONS = {
    "iron_token",
    "iron_server_url",
    "iron_server_keys",
    "iron_lease",
    "iron_cache_ttl",
    "iron_provider_key",
    "iron_openai_upstream",
    "iron_anthropic_upstream",
    "iron_admin_secret",
    "iron_state_dir",
    "iron_sync_interval",
}


def test_the_option_tests_below_cover_every_iron_option():
    declared = declared_iron_options()
    assert len(declared) >= 17
    assert declared == DIRECT_OPTIONS | SERVER_OPTIONS


def test_every_direct_mode_option_takes_effect_through_mitmdump_set(
    openai_emu, anthropic_emu, tmp_path
):
    from iron_runtime.analytics import Outbox
    from iron_runtime.testing import ControlServerEmulator

    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            {
                "iron-test-model": {
                    "input_cost_per_token": 1e-6,
                    "output_cost_per_token": 2e-6,
                    "max_output_tokens": 100,
                    "litellm_provider": "openai",
                }
            }
        )
    )
    state = tmp_path / "state"
    with ControlServerEmulator() as control:
        control.add_agent("agent-secret-token", "openai", openai_emu.api_key, 50_000_000)
        settings = {
            "iron_token": "agent-secret-token",
            "iron_openai_key": "env:EMU_OPENAI_KEY",
            "iron_anthropic_key": anthropic_emu.api_key,
            "iron_openai_upstream": openai_emu.url,
            "iron_anthropic_upstream": anthropic_emu.url,
            "iron_body_limit": "4096",
            "iron_budget": "0.05",
            "iron_pricing": str(prices),
            "iron_state_dir": str(state),
            "iron_admin_secret": "admin-secret",
            "iron_server_url": control.url,
            "iron_sync_interval": "3600",
            "iron_flush_deadline": "0",
            "iron_retention_days": "30",
        }
        assert set(settings) == DIRECT_OPTIONS
        proc, port = start_mitmdump(tmp_path, settings, {"EMU_OPENAI_KEY": openai_emu.api_key})
        try:
            base = f"http://127.0.0.1:{port}"
            oai = openai.OpenAI(base_url=base + "/v1", api_key="agent-secret-token", max_retries=0)
            # iron_token
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=base + "/v1", api_key="direct", max_retries=0).models.list()
            # iron_openai_key (env:NAME), iron_openai_upstream
            reply = oai.chat.completions.create(
                model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "set"}]
            )
            assert reply.choices[0].message.content == "Echo: set"
            assert openai_emu.requests[-1].headers["authorization"] == (
                f"Bearer {openai_emu.api_key}"
            )
            # iron_anthropic_key, iron_anthropic_upstream
            import anthropic

            claude = anthropic.Anthropic(base_url=base, api_key="agent-secret-token", max_retries=0)
            message = claude.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "a"}]
            )
            assert message.content[0].text == "Echo: a"
            assert anthropic_emu.requests[-1].headers["x-api-key"] == anthropic_emu.api_key
            # iron_body_limit: 4096 bytes
            with pytest.raises(openai.APIStatusError) as err:
                oai.chat.completions.create(
                    model="gpt-4o",
                    max_tokens=10,
                    messages=[{"role": "user", "content": "x" * 5000}],
                )
            assert err.value.status_code == 413
            # iron_budget: $0.05, and a worst case far past it is refused
            with pytest.raises(openai.APIStatusError) as err:
                oai.chat.completions.create(
                    model="gpt-4o", max_tokens=16000, messages=[{"role": "user", "content": "b"}]
                )
            assert err.value.status_code == 402 and err.value.code == "insufficient_budget"
            # iron_pricing: a model only the price file knows is priced at its rates (with a
            # budget set, an unpriced model would be refused)
            raw = oai.chat.completions.with_raw_response.create(
                model="iron-test-model", max_tokens=10, messages=[{"role": "user", "content": "p"}]
            )
            usage = raw.parse().usage
            expected = (usage.prompt_tokens * 1 + usage.completion_tokens * 2) / 1e6
            assert raw.headers["x-iron-cost-usd"] == f"{expected:.6f}"
            # iron_admin_secret
            assert httpx.get(base + "/_iron/status").status_code == 404
            status = httpx.get(
                base + "/_iron/status", headers={"x-iron-admin-secret": "admin-secret"}
            )
            assert status.status_code == 200
            assert status.json()["budget"]["limit_micros"] == 50_000
        finally:
            out = stop_mitmdump(proc)
        # iron_state_dir: the events are in its outbox; iron_sync_interval (an hour) sent none
        # while running and iron_flush_deadline (0 s) sent none at stop, so all are pending
        # and the server (iron_server_url, up all along) received none.
        assert proc.returncode == 0, out
        assert "analytics not all sent before the deadline" in out
        # iron_retention_days: 30 days; with a server, pending events are never folded
        assert json.loads((tmp_path / "readout.json").read_text()) == {
            "sync_interval": 3600.0,
            "flush_deadline": 0.0,
            "retention_s": 30 * 86_400,
            "keep_pending": True,
        }
        outbox = Outbox(state / "analytics.sqlite3")
        try:
            stats = outbox.stats()
        finally:
            outbox.close()
        assert stats["totals"]["requests"] == 6
        assert stats["outbox"]["pending"] == 6
        assert control.events == {}


def test_every_server_mode_option_takes_effect_through_mitmdump_set(
    openai_emu, anthropic_emu, tmp_path
):
    from iron_runtime.testing import ControlServerEmulator

    with ControlServerEmulator() as control:
        control.add_agent("ic_agent_7", "openai", openai_emu.api_key, 50_000_000)
        control.default_grant = 2_000_000
        settings = {
            "iron_token": "ic_agent_7",
            "iron_server_url": control.url,
            "iron_server_keys": "true",
            "iron_lease": "true",
            "iron_cache_ttl": "0",
            "iron_provider_key": anthropic_emu.api_key,
            "iron_openai_upstream": openai_emu.url,
            "iron_anthropic_upstream": anthropic_emu.url,
            "iron_admin_secret": "admin-secret",
            "iron_state_dir": str(tmp_path / "state"),  # an outbox of its own
            "iron_sync_interval": "0.25",
        }
        assert set(settings) == SERVER_OPTIONS
        proc, port = start_mitmdump(tmp_path, settings, {})
        try:
            base = f"http://127.0.0.1:{port}"
            admin = {"x-iron-admin-secret": "admin-secret"}
            # iron_lease: the server's grant becomes the limit
            assert wait_for(
                lambda: (
                    httpx.get(base + "/_iron/status", headers=admin).json()["budget"][
                        "limit_micros"
                    ]
                    == 2_000_000
                )
            )
            oai = openai.OpenAI(base_url=base + "/v1", api_key="ic_agent_7", max_retries=0)
            fetches = control.key_fetches
            for _ in range(2):
                oai.chat.completions.create(
                    model="gpt-4o", max_tokens=10, messages=[{"role": "user", "content": "k"}]
                )
            # iron_server_keys: the OpenAI key came from the server
            assert openai_emu.requests[-1].headers["authorization"] == (
                f"Bearer {openai_emu.api_key}"
            )
            # iron_cache_ttl: 0 s, so each request fetched the key again
            assert control.key_fetches - fetches == 2
            # iron_provider_key: an Anthropic key, detected as such, used for Claude
            import anthropic

            claude = anthropic.Anthropic(base_url=base, api_key="ic_agent_7", max_retries=0)
            claude.messages.create(
                model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "a"}]
            )
            assert anthropic_emu.requests[-1].headers["x-api-key"] == anthropic_emu.api_key
            # iron_sync_interval: a quarter of a second, so the events reach the server while
            # the router runs
            assert wait_for(lambda: len(control.events) == 3)
            (lease,) = control.leases.values()
            assert len(lease.reports) == 3  # the lease's spending is reported
        finally:
            out = stop_mitmdump(proc)
        assert proc.returncode == 0, out
        assert not lease.open  # returned at stop
        readout = json.loads((tmp_path / "readout.json").read_text())
        assert readout["sync_interval"] == 0.25


@pytest.mark.parametrize(
    "setting, message",
    [
        ("iron_sync_interval=soon", "iron_sync_interval must be a number of seconds > 0"),
        ("iron_sync_interval=0", "iron_sync_interval must be a number of seconds > 0"),
        ("iron_flush_deadline=-1", "iron_flush_deadline must be a number of seconds >= 0"),
        ("iron_retention_days=-1", "iron_retention_days must be >= 0"),
    ],
)
def test_mitmdump_refuses_a_bad_duration(tmp_path, setting, message):
    out = subprocess.run(
        [
            str(MITMDUMP),
            "-s",
            str(ROOT / "addons" / "iron.py"),
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(free_port()),
            "--set",
            f"confdir={tmp_path}",
            "--set",
            setting,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_mitmweb_options_page_edits_every_iron_option(tmp_path):
    """Each iron_* option has a type mitmweb's options page edits, and the durations are
    checked there as on the command line."""
    port, web_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mitmweb"),
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
            "iron_sync_interval=2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_serving(proc, port, "mitmweb")
        api = httpx.Client(
            base_url=f"http://127.0.0.1:{web_port}",
            headers={"authorization": "Bearer web-secret", "x-xsrftoken": "iron-xsrf"},
            cookies={"_mitmproxy_xsrf": "iron-xsrf"},
        )
        options = {k: v for k, v in api.get("/options").json().items() if k.startswith("iron_")}
        assert set(options) == declared_iron_options()
        assert {v["type"] for v in options.values()} <= {"str", "int", "bool"}
        assert options["iron_sync_interval"]["value"] == "2"
        assert api.put("/options", json={"iron_sync_interval": "0.5"}).status_code == 200
        refused = api.put("/options", json={"iron_flush_deadline": "soon"})
        assert refused.status_code == 400
        assert "iron_flush_deadline must be a number of seconds" in refused.text
        options = api.get("/options").json()
        assert options["iron_sync_interval"]["value"] == "0.5"
        assert options["iron_flush_deadline"]["value"] == "3"
    finally:
        proc.terminate()
        proc.wait(10)
