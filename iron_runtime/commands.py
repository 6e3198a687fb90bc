"""``iron-runtime serve``, ``run`` and ``stats``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .launcher import LlmRouter, default_state_dir

# Flags of serve and run: (flag, environment variable, help).
ROUTER_FLAGS = [
    ("--provider-key", "IRON_PROVIDER_KEY", "one real key; its provider is detected"),
    ("--openai-key", "IRON_OPENAI_KEY", "real OpenAI key (default: $OPENAI_API_KEY)"),
    ("--anthropic-key", "IRON_ANTHROPIC_KEY", "real Anthropic key (default: $ANTHROPIC_API_KEY)"),
    (
        "--token",
        "IRON_TOKEN",
        "token agents present (default: a random one for run, 'direct' for serve)",
    ),
    ("--server-url", "IRON_SERVER_URL", "Iron Cage control server (server mode with --token)"),
    ("--budget", "IRON_BUDGET", "USD limit (default: unlimited, or the server's lease)"),
    ("--pricing", "IRON_PRICING", "price file merged over the built-in one"),
    ("--state-dir", "IRON_STATE_DIR", "analytics outbox and certificates folder"),
    ("--openai-base-url", "IRON_OPENAI_BASE_URL", "OpenAI upstream"),
    ("--anthropic-base-url", "IRON_ANTHROPIC_BASE_URL", "Anthropic upstream"),
]


def add_router_flags(p: argparse.ArgumentParser) -> None:
    for flag, env, text in ROUTER_FLAGS:
        p.add_argument(flag, default=os.environ.get(env), help=f"{text} [${env}]")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="listen port (default: a free one)")
    p.add_argument("--cache-ttl", type=int, default=300, help="seconds a server key is kept")
    p.add_argument("--sync-interval", type=float, default=5.0, help="seconds between syncs")


def start_router(args: argparse.Namespace, default_token: str) -> LlmRouter:
    keys = {
        "openai": args.openai_key or os.environ.get("OPENAI_API_KEY"),
        "anthropic": args.anthropic_key or os.environ.get("ANTHROPIC_API_KEY"),
    }
    keys = {p: k for p, k in keys.items() if k}
    upstreams = {
        p: u
        for p, u in (("openai", args.openai_base_url), ("anthropic", args.anthropic_base_url))
        if u
    }
    token = args.token or default_token
    return LlmRouter(
        api_key=token,
        server_url=args.server_url,
        cache_ttl_seconds=args.cache_ttl,
        budget=float(args.budget) if args.budget not in (None, "") else None,
        provider_key=args.provider_key or None,
        provider_keys=keys or None,
        upstreams=upstreams or None,
        port=args.port,
        host=args.host,
        state_dir=args.state_dir or None,
        pricing=args.pricing or None,
        sync_interval=args.sync_interval,
    )


def agent_environment(router: LlmRouter) -> dict[str, str]:
    """What an agent needs to talk to the router with either SDK, and nothing more."""
    root = router.base_url.removesuffix("/v1")
    return {
        "OPENAI_BASE_URL": router.base_url,
        "OPENAI_API_KEY": router.api_key,
        "ANTHROPIC_BASE_URL": root,
        "ANTHROPIC_API_KEY": router.api_key,
    }


def _usd(micros: int | float) -> str:
    return f"${micros / 1e6:,.4f}"


def spend_table(stats: dict[str, Any]) -> str:
    rows = [("model", "requests", "failed", "input tok", "output tok", "cost")]
    for model, b in sorted(stats.get("by_model", {}).items()):
        rows.append(
            (
                model or "-",
                str(b["requests"]),
                str(b["failed"]),
                f"{b['input_tokens']:,}",
                f"{b['output_tokens']:,}",
                _usd(b["cost_micros"]),
            )
        )
    t = stats.get("totals") or {
        "requests": 0,
        "failed": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_micros": 0,
    }
    rows.append(
        (
            "total",
            str(t["requests"]),
            str(t["failed"]),
            f"{t['input_tokens']:,}",
            f"{t['output_tokens']:,}",
            _usd(t["cost_micros"]),
        )
    )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0 or n == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- serve -------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    router = start_router(args, default_token="direct")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"iron-runtime router listening on {router.base_url} "
        f"(provider {router.provider}, budget "
        f"{'unlimited' if router.budget is None else f'${router.budget:,.2f}'})"
    )
    print("Point your agent at it:")
    for name, value in agent_environment(router).items():
        print(f"  export {name}={value}")
    print("Ctrl-C stops it (the lease is returned and analytics flushed).", flush=True)
    try:
        while not stop.wait(0.5):
            if not router.is_running:
                print("the router process ended unexpectedly", file=sys.stderr)
                return 1
        stats = router.stats()
    finally:
        router.stop()
    print("\nstopped.\n" + spend_table(stats), flush=True)
    return 0


# -- run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    command = args.agent_command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("iron-runtime run: give the agent's command after --", file=sys.stderr)
        return 2
    import secrets as _secrets

    router = start_router(args, default_token=f"ic_run_{_secrets.token_urlsafe(12)}")
    # The agent gets the router, not the keys: no real key, no IP_TOKEN_KEY, no IRON_* setting.
    hidden = {"IP_TOKEN_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in hidden and (not k.startswith("IRON_") or k == "IRON_LOG_LEVEL")
    }
    env.update(agent_environment(router))
    reason = None
    try:
        try:
            agent = subprocess.Popen(command, env=env)
        except OSError as e:
            print(f"iron-runtime run: cannot start {command[0]!r}: {e}", file=sys.stderr)
            return 127

        def forward(sig: int, _frame: Any) -> None:
            if agent.poll() is None:
                agent.send_signal(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, forward)
        while agent.poll() is None:
            time.sleep(0.2)
            if not router.is_running:
                reason = "the router process ended"
                agent.terminate()
                break
            if args.stop_on_budget and router.budget is not None:
                status = router._admin("GET", "status")["budget"]
                if status["refused"]:
                    reason = "budget spent"
                    agent.terminate()
                    try:
                        agent.wait(5)
                    except subprocess.TimeoutExpired:
                        agent.kill()
        code = agent.wait()
        try:
            stats = router.stats()
        except Exception:  # the router is gone: the agent's exit code still matters
            stats = {}
    finally:
        router.stop()
    if code < 0:
        code = 128 - code
    print(
        f"\niron-runtime: agent exited with {code}" + (f" (stopped: {reason})" if reason else ""),
        file=sys.stderr,
    )
    print(spend_table(stats), file=sys.stderr, flush=True)
    return code


# -- stats -------------------------------------------------------------------------------------


def stats(args: argparse.Namespace) -> int:
    from .analytics import Outbox

    folder = Path(args.state_dir or default_state_dir())
    path = folder / "analytics.sqlite3"
    if not path.exists():
        print(f"no analytics in {folder} (nothing recorded yet)", file=sys.stderr)
        return 1
    outbox = Outbox(path)
    try:
        data = outbox.stats(recent=args.recent)
    finally:
        outbox.close()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"analytics in {path}")
    print(spend_table(data))
    by_provider = ", ".join(
        f"{p}: {b['requests']} requests, {_usd(b['cost_micros'])}"
        for p, b in sorted(data["by_provider"].items())
    )
    print(f"\nby provider: {by_provider or '-'}")
    o = data["outbox"]
    print(f"outbox: {o['sent']} sent, {o['pending']} pending, {o['parked']} parked")
    if data["recent"]:
        print("\nrecent requests:")
        for e in data["recent"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["timestamp_ms"] / 1000))
            what = (
                f"{e.get('input_tokens', 0)}→{e.get('output_tokens', 0)} tok "
                f"{_usd(e.get('cost_micros', 0))}"
                if e["event_type"] == "llm_request_completed"
                else f"failed: {e.get('error_code')}"
            )
            print(f"  {when}  {e.get('provider', '?'):<9} {e.get('model') or '-':<24} {what}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run a router in the foreground")
    add_router_flags(p)
    p.set_defaults(func=serve)
    p = sub.add_parser("run", help="run an agent command behind a router: run [options] -- CMD")
    add_router_flags(p)
    p.add_argument(
        "--stop-on-budget",
        action="store_true",
        help="stop the agent once a request is refused for the budget",
    )
    p.add_argument("agent_command", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)
    p = sub.add_parser("stats", help="totals and recent requests from the analytics outbox")
    p.add_argument("--state-dir", default=os.environ.get("IRON_STATE_DIR"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--recent", type=int, default=10)
    p.set_defaults(func=stats)
