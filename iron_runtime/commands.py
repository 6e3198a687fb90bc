"""``iron-runtime serve``, ``run`` and ``stats``."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .budget import usd
from .launcher import LlmRouter, default_state_dir
from .providers import Provider, default_upstream
from .upstreams import Upstream


class CliError(Exception):
    """A bad argument or a bad environment: one line on stderr saying what to do, then exit
    with ``code`` (2)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _number(kind: type, text: str, minimum: float, strict: bool, what: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
    return value


def usd_amount(text: str) -> float:
    return _number(float, text, 0, False, "must be a number of US dollars >= 0 (e.g. 5 or 0.25)")


def port_number(text: str) -> int:
    value = _number(int, text, 0, False, "must be a port number from 0 to 65535 (0: a free one)")
    if value > 65535:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 0 to 65535 (0: a free one), got {text!r}"
        )
    return value


def seconds(text: str) -> float:
    return _number(float, text, 0, True, "must be a number of seconds > 0")


def whole_seconds(text: str) -> int:
    return _number(int, text, 0, False, "must be a whole number of seconds >= 0")


def count(text: str) -> int:
    return _number(int, text, 0, False, "must be a whole number >= 0")


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_ms(text: str) -> int:
    """``--since``: a duration back from now (``90s``, ``30m``, ``1h``, ``7d``, ``2w``) or a
    local date or time (``2025-06-01``, ``2025-06-01T14:00``); a ``timestamp_ms``."""
    t = text.strip().lower()
    if t[-1:] in UNITS:
        try:
            amount = float(t[:-1])
        except ValueError:
            amount = math.nan
        if math.isfinite(amount) and amount >= 0:
            return int((time.time() - amount * UNITS[t[-1]]) * 1000)
    try:
        return int(datetime.datetime.fromisoformat(text.strip()).timestamp() * 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a duration such as 30m, 1h, 7d or a date such as 2025-06-01, got {text!r}"
        ) from None


# Flags of serve and run: (flag, environment variable, type, help).
ROUTER_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--provider-key", "IRON_PROVIDER_KEY", str, "one real key; its provider is detected"),
    ("--openai-key", "IRON_OPENAI_KEY", str, "real OpenAI key (default: $OPENAI_API_KEY)"),
    (
        "--anthropic-key",
        "IRON_ANTHROPIC_KEY",
        str,
        "real Anthropic key (default: $ANTHROPIC_API_KEY)",
    ),
    (
        "--token",
        "IRON_TOKEN",
        str,
        "token agents present (default: a random one for run, 'direct' for serve)",
    ),
    (
        "--server-url",
        "IRON_SERVER_URL",
        str,
        "Iron Cage control server (server mode with --token)",
    ),
    (
        "--budget",
        "IRON_BUDGET",
        usd_amount,
        "USD limit (default: unlimited, or the server's lease)",
    ),
    ("--pricing", "IRON_PRICING", str, "price file merged over the built-in one"),
    ("--state-dir", "IRON_STATE_DIR", str, "analytics outbox and certificates folder"),
    ("--openai-base-url", "IRON_OPENAI_BASE_URL", str, "OpenAI upstream"),
    ("--anthropic-base-url", "IRON_ANTHROPIC_BASE_URL", str, "Anthropic upstream"),
]


def add_router_flags(p: argparse.ArgumentParser) -> None:
    for flag, env, kind, text in ROUTER_FLAGS:
        p.add_argument(
            flag, type=kind, default=os.environ.get(env) or None, help=f"{text} [${env}]"
        )
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=port_number, default=0, help="listen port (default: a free one)")
    p.add_argument(
        "--cache-ttl", type=whole_seconds, default=300, help="seconds a server key is kept"
    )
    p.add_argument("--sync-interval", type=seconds, default=5.0, help="seconds between syncs")
    p.add_argument("--json", action="store_true", help="the spend summary as JSON")


def state_folder(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _check_state_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CliError(
            f"state folder {folder} is not writable ({e.strerror or e}): "
            "choose another with --state-dir or $IRON_STATE_DIR"
        ) from None


def _check_port(host: str, port: int) -> None:
    if not port:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise CliError(f"cannot listen on {host!r}: {e.strerror or e}: check --host") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as e:
            raise CliError(
                f"cannot listen on {host} port {port} ({e.strerror or e}): "
                "choose another --port, or omit it for a free one"
            ) from None


def _check_server(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--server-url must be an http(s):// URL, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CliError(f"--server-url has an invalid port: {url!r}") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as e:
        raise CliError(
            f"cannot reach the Iron Cage server at {url} ({e.strerror or e}): "
            "check --server-url and that the server is up"
        ) from None


def upstream_urls(args: argparse.Namespace) -> dict[str, str]:
    """The upstream of each provider, as the router will use it."""
    given = {"openai": args.openai_base_url, "anthropic": args.anthropic_base_url}
    try:
        return {
            p.value: Upstream.parse(given[p.value] or default_upstream(p)).url for p in Provider
        }
    except ValueError as e:
        raise CliError(f"{e}: check --openai-base-url and --anthropic-base-url") from None


def start_router(args: argparse.Namespace, default_token: str) -> LlmRouter:
    """Check the arguments and the environment, each failure as one ``CliError`` line, then
    start the router."""
    given = {
        "openai": args.openai_key or os.environ.get("OPENAI_API_KEY"),
        "anthropic": args.anthropic_key or os.environ.get("ANTHROPIC_API_KEY"),
    }
    keys: dict[str, str] = {p: k for p, k in given.items() if k}
    if not (keys or args.provider_key or (args.server_url and args.token)):
        raise CliError(
            "no provider key: set OPENAI_API_KEY or ANTHROPIC_API_KEY (or pass --provider-key),"
            " or give --token and --server-url to take keys from an Iron Cage server"
        )
    upstreams = upstream_urls(args)
    if args.pricing and not os.path.isfile(args.pricing):
        raise CliError(f"price file {args.pricing} not found: check --pricing")
    if args.server_url:
        _check_server(args.server_url)
    _check_state_folder(state_folder(args))
    _check_port(args.host, args.port)
    token = args.token or default_token
    return LlmRouter(
        api_key=token,
        server_url=args.server_url,
        cache_ttl_seconds=args.cache_ttl,
        budget=args.budget,
        provider_key=args.provider_key or None,
        provider_keys=keys or None,
        upstreams=upstreams,
        port=args.port,
        host=args.host,
        state_dir=state_folder(args),
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


BY = ("model", "provider", "day")
ZERO = {"requests": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0, "cost_micros": 0}


def spend_table(stats: dict[str, Any], by: str = "model") -> str:
    """Requests, failures, tokens and cost, a row per ``by`` (model, provider or day), and the
    total."""
    rows: list[tuple[str, ...]] = [(by, "requests", "failed", "input tok", "output tok", "cost")]
    for name, b in sorted(stats.get(f"by_{by}", {}).items()):
        rows.append(_row(name or "-", b))
    rows.append(_row("total", stats.get("totals") or ZERO))
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


def _row(name: str, b: dict[str, Any]) -> tuple[str, ...]:
    return (
        name,
        str(b["requests"]),
        str(b["failed"]),
        f"{b['input_tokens']:,}",
        f"{b['output_tokens']:,}",
        usd(b["cost_micros"]),
    )


def folder_stats(folder: Path, since: int | None = None, recent: int = 10) -> dict[str, Any]:
    """The analytics outbox of a state folder, from ``since`` on; empty figures when it has
    none. Events older than the router's retention count from their hourly totals (``since``
    inside such an hour counts the whole hour). Reading never prunes: only a router does,
    which knows whether a control server still has to take the pending events."""
    from .analytics import Outbox

    path = folder / "analytics.sqlite3"
    if not path.exists():
        return {"totals": dict(ZERO), "by_model": {}, "by_provider": {}, "by_day": {}}
    outbox = Outbox(path, retention_s=None)
    try:
        return outbox.stats(recent=recent, since=since)
    finally:
        outbox.close()


def session_summary(folder: Path, started_ms: int) -> dict[str, Any]:
    """This session's figures (events from ``started_ms`` on) and the folder's cumulative
    totals."""
    session = folder_stats(folder, since=started_ms, recent=0)
    session.pop("recent", None)
    session.pop("outbox", None)
    return {
        "state_dir": str(folder),
        "session": session,
        "cumulative": folder_stats(folder, recent=0)["totals"],
    }


def summary_text(summary: dict[str, Any], what: str) -> str:
    c = summary["cumulative"]
    return (
        f"{what}:\n{spend_table(summary['session'])}\n"
        f"state folder {summary['state_dir']}, all sessions: {c['requests']} requests, "
        f"{usd(c['cost_micros'])} (iron-runtime stats)"
    )


# -- serve -------------------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    started_ms = int(time.time() * 1000)
    router = start_router(args, default_token="direct")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    folder = state_folder(args)
    try:
        budget = router.budget
        print(
            f"iron-runtime router listening on {router.base_url} "
            f"(provider {router.provider}, budget "
            f"{'unlimited' if budget is None else usd(round(budget * 1e6))})"
        )
        print(f"  state folder    {folder}")
        print("  upstreams       " + ", ".join(f"{p} {u}" for p, u in upstream_urls(args).items()))
        print(
            f"  control server  {args.server_url} (keys, lease and analytics sync)"
            if args.server_url
            else "  control server  none (direct mode: local keys, analytics kept here)"
        )
        print("Point your agent at it:")
        for name, value in agent_environment(router).items():
            print(f"  export {name}={value}")
        print("Ctrl-C stops it (the lease is returned and analytics flushed).", flush=True)
        while not stop.wait(0.5):
            if not router.is_running:
                print("iron-runtime serve: the router process ended unexpectedly", file=sys.stderr)
                return 1
    finally:
        router.stop()
    summary = session_summary(folder, started_ms)
    if args.json:
        print(json.dumps(summary, indent=2), flush=True)
    else:
        print("\nstopped.\n" + summary_text(summary, "this session"), flush=True)
    return 0


# -- run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    command = args.agent_command
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the agent's command after --, e.g. iron-runtime run -- python a.py")
    import secrets as _secrets

    started_ms = int(time.time() * 1000)
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
    finally:
        router.stop()  # every event committed: the summary below reads the outbox
    if code < 0:
        code = 128 - code
    summary = session_summary(state_folder(args), started_ms)
    print(
        f"\niron-runtime: agent exited with {code}" + (f" (stopped: {reason})" if reason else ""),
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps({"exit_code": code, **summary}, indent=2), file=sys.stderr, flush=True)
    else:
        print(summary_text(summary, "this run"), file=sys.stderr, flush=True)
    return code


# -- stats -------------------------------------------------------------------------------------


def stats(args: argparse.Namespace) -> int:
    folder = Path(args.state_dir) if args.state_dir else default_state_dir()
    path = folder / "analytics.sqlite3"
    if not path.exists():
        print(
            f"iron-runtime stats: no analytics in {folder} (nothing recorded yet)",
            file=sys.stderr,
        )
        return 1
    try:
        data = folder_stats(folder, since=args.since, recent=args.recent)
    except sqlite3.Error as e:
        raise CliError(f"cannot read {path} ({e}): is it an iron-runtime state folder?") from None
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    when = (
        ""
        if args.since is None
        else time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(args.since / 1000))
    )
    print(f"analytics in {path}{when}")
    print(spend_table(data, args.by))
    if args.by != "provider":
        by_provider = ", ".join(
            f"{p}: {b['requests']} requests, {usd(b['cost_micros'])}"
            for p, b in sorted(data["by_provider"].items())
        )
        print(f"\nby provider: {by_provider or '-'}")
    o = data["outbox"]
    print(
        f"outbox: {o['sent']} sent, {o['pending']} pending, {o['parked']} parked"
        + (f"; {o['folded']} older ones kept as hourly totals" if o.get("folded") else "")
    )
    if data["recent"]:
        print("\nrecent requests:")
        for ev in data["recent"]:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["timestamp_ms"] / 1000))
            what = (
                f"{ev.get('input_tokens', 0)}→{ev.get('output_tokens', 0)} tok "
                f"{usd(ev.get('cost_micros', 0))}"
                if ev["event_type"] == "llm_request_completed"
                else f"failed: {ev.get('error_code')}"
            )
            print(f"  {at}  {ev.get('provider', '?'):<9} {ev.get('model') or '-':<24} {what}")
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
    p.add_argument(
        "--state-dir",
        default=os.environ.get("IRON_STATE_DIR"),
        help="the state folder to read [$IRON_STATE_DIR]",
    )
    p.add_argument("--json", action="store_true", help="everything as JSON")
    p.add_argument("--recent", type=count, default=10, help="how many recent requests to list")
    p.add_argument(
        "--since",
        type=since_ms,
        help="only requests from then on: 30m, 1h, 7d, or a date such as 2025-06-01 "
        "(to the hour for requests older than the retention)",
    )
    p.add_argument("--by", choices=BY, default="model", help="the table's rows (default model)")
    p.set_defaults(func=stats)
