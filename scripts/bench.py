#!/usr/bin/env python3
"""Benchmark: direct to the emulator vs bare mitmproxy vs the iron router, in one run.

    .venv/bin/python scripts/bench.py [--duration 2] [--rounds 5] [--only openai|gateway]
    .venv/bin/python scripts/bench.py --sections memory,burst [--requests 20000] [--streams 1000]

Each emulator (OpenAI, Anthropic) runs in its own process; so do the bare mitmproxy (the
router's master without the iron addons, mitmproxy's code as it comes) and the router. The
router process changes mitmproxy itself (``addons/lean.py``: no debug type checks, only the
addon modules it uses; ``addons/dispatch.py``: a table of each event's handlers); the
reference row "bare, patched" is bare mitmproxy with those changes, so that router / bare,
patched is the cost of the iron addons alone. Non-streamed load comes from
``wrk`` (Debian package ``wrk``) in another process, at concurrency 1, 10 and 50; streamed
requests are timed by this script, one at a time: time to first byte on answers whose
chunks come 5 ms apart (the first chunk is alone on the wire), and the per-chunk cost on
200-chunk answers sent at once; the CPU time each proxy process spends per request (from
``/proc``, at the highest concurrency), a figure less shaken by a busy machine than req/s.
With two CPUs or more, the emulators, wrk and this script run on all but the last CPU and
each proxy alone on the last one (``--no-pin``: no pinning); proxies are measured one at a
time. Figures are printed with the ratios router/bare and
router/direct; nothing is asserted, since this machine is shared and noisy. Every run is
bounded by ``--duration`` seconds.

Rows:
  openai:  direct, bare mitmproxy, iron router, iron router with a budget, bare patched
           (OpenAI chat.completions)
  gateway: direct Anthropic, bare mitmproxy, iron router native /v1/messages, and
           iron gateway (OpenAI chat.completions for a Claude model, translated both ways)

Sections (``--sections``, comma-separated; default ``throughput,tokens``, ``all`` for all):
  throughput  the rows above: req/s, latency, streamed TTFB
  tokens      how long the reservation's token count takes
  memory      RSS (VmRSS of the router process, not the launcher) of fresh processes after
              ``--requests`` requests (wrk, 4 in 5 OpenAI chat for gpt-4o-mini, 1 in 5
              Anthropic messages for claude-sonnet-4-6): a router without a budget, one with
              a budget, bare mitmproxy (OpenAI requests only); targets <= 110 / 150 MB
  burst       ``--streams`` streamed chat completions opened at once (non-blocking connects
              issued back to back, then one epoll loop) against the router and bare
              mitmproxy: failures, connect time (connect() until the socket is writable, per
              connection) and time to the first response byte (from the connect() call);
              targets 0 failures, every connect <= 100 ms
  outbox      the analytics outbox's file after ``--outbox-events`` requests over 30
              simulated days (``scripts/bench_outbox.py``), with the default 7-day retention
              and kept whole; target: bounded (no growth once the retention is full)
The throughput section then runs the router with and without a budget in turn, ten 3 s runs
each at c=10 (``--pair-rounds``): the budget's cost is a few percent, and the table's short
rounds cannot tell that from the noise of a shared machine.
The run ends with a summary of each target (throughput: router/bare req/s at c=10 >= 0.80,
added p50 at c=1 <= +0.3 ms, a budget within 5 % (from the paired runs); memory; burst;
outbox) and the figure reached.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from iron_runtime import LlmRouter
from iron_runtime.launcher import _read_line, start_proxy_process, stop_proxy_process

OPENAI_KEY = "sk-bench-openai-key-0123456789"
ANTHROPIC_KEY = "sk-ant-bench-anthropic-key-0123456789"
PROMPT = "Say hello in one word"
STREAM_WORDS = 200


@dataclass
class Target:
    name: str
    url: str
    path: str
    headers: dict[str, str]
    body: dict
    results: dict = field(default_factory=dict)
    pid: int | None = None  # the proxy's process, whose CPU time is read around each run


def chat_body(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}]}


def messages_body(model: str) -> dict:
    return {**chat_body(model), "max_tokens": 100}


PROXY_CPUS: set[int] = set()  # where each proxy runs when pinned (see ``pin_load``)


def pin_load() -> None:
    """With two CPUs or more: this script, and so the emulators and wrk it starts, on all
    but the last; each proxy, measured one at a time, alone on the last (``pin_proxy``)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    PROXY_CPUS.add(cpus[-1])
    os.sched_setaffinity(0, set(cpus[:-1]))


def pin_proxy(pid: int) -> None:
    """Every thread of a proxy process on the proxy CPU (threads it starts later follow)."""
    if not PROXY_CPUS:
        return
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), PROXY_CPUS)
        except ProcessLookupError:
            pass


def start_emulator(provider: str, key: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "iron_runtime.testing", provider, "--api-key", key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, url


def wrk(t: Target, connections: int, duration: float, tmp: Path, limit: int | None = None) -> dict:
    """One wrk run of ``duration`` seconds; with ``limit``, it stops after that many
    answers (``duration`` then only bounds it)."""
    script = tmp / "post.lua"
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(t.body))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in t.headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            t.url + t.path,
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "requests": int(count.group(1)) if count else 0,
        "p50": pct("50"),
        "p99": pct("99"),
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1) if errors else "",
    }


def wrk_count(t: Target, connections: int, count: int, seconds: float, tmp: Path) -> dict:
    """Send ``count`` requests with wrk (``connections`` at a time), bounded by ``seconds``:
    the number answered and how many of them were not 2xx (wrk's own run length is a
    duration, so the script ends the process at the count)."""
    script = tmp / "count.lua"
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(t.body))}",
        'wrk.headers["Content-Type"] = "application/json"',
        *(f'wrk.headers["{k}"] = "{v}"' for k, v in t.headers.items()),
        "local answered, bad = 0, 0",
        "function response(status, headers, body)",
        "  answered = answered + 1",
        "  if status < 200 or status > 299 then bad = bad + 1 end",
        f"  if answered >= {count} then",
        '    io.write(string.format("answered %d bad %d\\n", answered, bad))',
        "    io.flush()",
        "    os.exit(0)",
        "  end",
        "end",
    ]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script)]
        + [t.url + t.path],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    m = re.search(r"answered (\d+) bad (\d+)", out)
    if m:
        return {"requests": int(m.group(1)), "bad": int(m.group(2)), "errors": ""}
    # the time bound came first: wrk's own summary
    done = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(done.group(1)) if done else 0,
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "errors": (errors.group(1) if errors else "") + f" (stopped after {seconds:.0f} s)",
    }


def stream_timings(t: Target, words: int, pause: float, count: int, deadline: float) -> dict:
    """Median time to the first event and to the end of streamed answers, one at a time.

    The emulators echo the prompt, so ``words`` words give that many text chunks; ``pause``
    is how long they wait between chunks (sent as ``x-emulator-chunk-delay``).
    """
    host, port = t.url.removeprefix("http://").split(":")
    prompt = " ".join(["word"] * (words - 1))
    body = json.dumps(
        {**t.body, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    ).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in t.headers.items())
    head = (
        f"POST {t.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nx-emulator-chunk-delay: {pause}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    ttfb, total = [], []
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            sock.sendall(head + body)
            buf = b""
            first = None
            while not buf.endswith(b"\r\n0\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"{t.name}: connection closed mid-stream")
                buf += chunk
                if first is None and b"data:" in buf:
                    first = time.perf_counter()
            if not buf.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"{t.name}: {buf[:300]!r}")
            total.append(time.perf_counter() - t0)
            ttfb.append(first - t0)
    finally:
        sock.close()
    return {
        "ttfb": statistics.median(ttfb) * 1000,
        "total": statistics.median(total) * 1000,
        "n": len(total),
    }


def measure(targets: list[Target], conc: list[int], args, tmp: Path) -> None:
    """Each cell is the median of ``--rounds`` wrk runs, the targets taking turns within a
    round, so that a slow patch of this shared machine hits every target alike."""
    for t in targets:
        wrk(t, 10, 1, tmp)  # warm-up
    for c in conc:
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for _ in range(args.rounds):
            for t in targets:
                before = cpu_seconds(t.pid)
                r = wrk(t, c, args.duration, tmp)
                spent = cpu_seconds(t.pid) - before
                r["cpu_ms"] = 1000 * spent / r["requests"] if t.pid and r["requests"] else None
                runs[t.name].append(r)
        for t in targets:
            cell = sorted(runs[t.name], key=lambda r: r["rps"])[len(runs[t.name]) // 2]
            cpu = [r["cpu_ms"] for r in runs[t.name] if r["cpu_ms"] is not None]
            t.results[c] = {**cell, "cpu_ms": statistics.median(cpu) if cpu else None}
    for t in targets:
        limit = time.monotonic() + 60
        t.results["paced"] = stream_timings(t, 20, 0.005, args.stream_requests, limit)
        t.results["burst"] = stream_timings(t, STREAM_WORDS, 0.0, args.stream_requests, limit)
        print(f"  measured {t.name}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int | None) -> float:
    """User plus system CPU time of a process so far (0 without one)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_pair(router: Target, budgeted: Target, rounds: int, duration: float, tmp: Path):
    """The router with and without a budget, taking turns at concurrency 10 for ``rounds``
    runs each (the table's few short rounds cannot tell 5 % from this machine's noise): the
    medians of req/s and CPU per request, kept in ``router.results["pair"]``."""
    runs: dict[str, list[dict]] = {"plain": [], "budget": []}
    for _ in range(rounds):
        for key, t in (("plain", router), ("budget", budgeted)):
            before = cpu_seconds(t.pid)
            r = wrk(t, 10, duration, tmp)
            r["cpu_ms"] = 1000 * (cpu_seconds(t.pid) - before) / max(r["requests"], 1)
            runs[key].append(r)

    def median(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    pair = {
        "rounds": rounds,
        "rps": median("plain", "rps"),
        "cpu_ms": median("plain", "cpu_ms"),
        "budget_rps": median("budget", "rps"),
        "budget_cpu_ms": median("budget", "cpu_ms"),
    }
    router.results["pair"] = pair
    print(
        f"\nRouter without / with a budget, {rounds} paired runs of {duration:.0f} s at c=10: "
        f"req/s {pair['rps']:.0f} / {pair['budget_rps']:.0f}, "
        f"CPU ms/req {pair['cpu_ms']:.3f} / {pair['budget_cpu_ms']:.3f}"
    )


def report(title: str, targets: list[Target], conc: list[int], duration: float) -> None:
    top = conc[-1]
    print(f"\n{title}: non-streamed, wrk -t1, median of rounds of {duration:.0f} s per cell")
    print(
        f"{'target':<22}"
        + "".join(f"{'c=' + str(c) + ' req/s':>13}{'p50 ms':>9}{'p99 ms':>9}" for c in conc)
        + f"{'CPU ms/req':>12}"
    )
    for t in targets:
        r = t.results
        cpu = r[top]["cpu_ms"]
        print(
            f"{t.name:<22}"
            + "".join(f"{r[c]['rps']:>13.0f}{r[c]['p50']:>9.2f}{r[c]['p99']:>9.2f}" for c in conc)
            + (f"{cpu:>12.3f}" if cpu is not None else f"{'-':>12}")
        )
        bad = [
            f"c={c}: {r[c]['bad']} non-2xx {r[c]['errors']}"
            for c in conc
            if r[c]["bad"] or r[c]["errors"]
        ]
        if bad:
            print(f"{'':<22}errors: {'; '.join(bad)}")
    print(f"{title}: streamed, one request at a time, median of {targets[0].results['paced']['n']}")
    print(
        f"{'target':<22}{'TTFB ms':>9}   (20 chunks, 5 ms apart){'total ms':>12}"
        f"   ({STREAM_WORDS} chunks at once)"
    )
    for t in targets:
        print(
            f"{t.name:<22}{t.results['paced']['ttfb']:>9.2f}{'':>26}"
            f"{t.results['burst']['total']:>9.2f}"
        )


def ratios(label: str, a: Target, b: Target, conc: list[int]) -> None:
    ra, rb = a.results, b.results
    cells = "  ".join(f"c={c}: {ra[c]['rps'] / rb[c]['rps']:.2f}" for c in conc)
    p50 = ra[conc[0]]["p50"] - rb[conc[0]]["p50"]
    ttfb = ra["paced"]["ttfb"] - rb["paced"]["ttfb"]
    chunk = (ra["burst"]["total"] - rb["burst"]["total"]) / STREAM_WORDS * 1000
    top = conc[-1]
    cpu = ""
    if ra[top]["cpu_ms"] and rb[top]["cpu_ms"]:
        cpu = f"   CPU/req c={top}: {ra[top]['cpu_ms'] / rb[top]['cpu_ms']:.2f}x"
    print(
        f"  {label:<28} req/s {cells}   p50 c={conc[0]} {p50:+.2f} ms   "
        f"TTFB {ttfb:+.2f} ms   per chunk {chunk:+.1f} µs{cpu}"
    )


SECTIONS = ("throughput", "tokens", "memory", "burst", "outbox")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=5, help="wrk runs per cell (median kept)")
    ap.add_argument("--stream-requests", type=int, default=40)
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--only", choices=["openai", "gateway"], default=None)
    ap.add_argument(
        "--sections",
        default="throughput,tokens",
        help=f"comma-separated, of {', '.join(SECTIONS)}; or all",
    )
    ap.add_argument(
        "--requests", type=int, default=20_000, help="memory: requests before RSS is read"
    )
    ap.add_argument(
        "--memory-seconds", type=float, default=180, help="memory: bound of each wrk load"
    )
    ap.add_argument("--streams", type=int, default=1000, help="burst: streams opened at once")
    ap.add_argument("--burst-seconds", type=float, default=60, help="burst: bound of each burst")
    ap.add_argument("--no-pin", action="store_true", help="leave every process on every CPU")
    ap.add_argument(
        "--pair-rounds",
        type=int,
        default=10,
        help="throughput: paired 3 s runs of the router with and without a budget (0: none)",
    )
    ap.add_argument(
        "--outbox-events", type=int, default=1_000_000, help="outbox: requests recorded"
    )
    args = ap.parse_args()
    sections = set(SECTIONS) if args.sections == "all" else set(args.sections.split(","))
    if sections - set(SECTIONS):
        raise SystemExit(f"unknown section(s): {sorted(sections - set(SECTIONS))}")
    if sections & {"throughput", "memory"} and not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    os.environ.setdefault("IRON_STATE_DIR", tempfile.mkdtemp(prefix="iron-bench-"))
    if not args.no_pin:
        pin_load()

    stops: list = []
    targets: list[tuple[str, str, str]] = []  # (target, figure, verdict)
    try:
        oemu, ourl = start_emulator("openai", OPENAI_KEY)
        aemu, aurl = start_emulator("anthropic", ANTHROPIC_KEY)
        stops += [oemu.kill, aemu.kill]
        upstreams = {"openai": ourl, "anthropic": aurl}
        if "throughput" in sections:
            targets += throughput(args, upstreams, stops)
        if sections & {"memory", "burst"}:
            with tempfile.TemporaryDirectory() as tmpdir:
                targets += memory_and_burst(args, sections, upstreams, Path(tmpdir), stops)
    finally:
        for stop in reversed(stops):
            stop()
    if "tokens" in sections:
        token_count_timings()
    if "outbox" in sections:
        targets += outbox_size(args.outbox_events)
    if targets:
        print("\nTargets (issue 11)")
        for name, figure, verdict in targets:
            print(f"  {name:<52} {figure:<44} {verdict}")


def throughput(args, upstreams: dict[str, str], stops: list) -> list[tuple[str, str, str]]:
    conc = [int(c) for c in args.concurrency.split(",")]
    ourl, aurl = upstreams["openai"], upstreams["anthropic"]
    keys = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}
    router = LlmRouter(provider_keys=keys, upstreams=upstreams)
    stops.append(router.stop)
    budgeted = LlmRouter(provider_keys=keys, upstreams=upstreams, budget=1_000_000)
    stops.append(budgeted.stop)
    print(f"router started in {router.startup_seconds:.2f} s", file=sys.stderr)
    rurl = router.base_url.removesuffix("/v1")
    bares, bare_pids = {}, {}
    for name, url in (("openai", ourl), ("anthropic", aurl)):
        bare_pids[name], bares[name] = start_bare(url, stops)
    patched_pid, patched_url = start_bare(ourl, stops, patched=True)
    for pid in (router.pid, budgeted.pid, patched_pid, *bare_pids.values()):
        pin_proxy(pid)

    chat = "/v1/chat/completions"
    okey = {"Authorization": f"Bearer {OPENAI_KEY}"}
    akey = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
    token = {"Authorization": f"Bearer {router.api_key}"}
    openai_rows = [
        Target("direct", ourl, chat, okey, chat_body("gpt-4o-mini")),
        Target(
            "bare mitmproxy",
            bares["openai"],
            chat,
            okey,
            chat_body("gpt-4o-mini"),
            pid=bare_pids["openai"],
        ),
        Target("iron router", rurl, chat, token, chat_body("gpt-4o-mini"), pid=router.pid),
        Target(
            "iron router+budget",
            budgeted.base_url.removesuffix("/v1"),
            chat,
            token,
            chat_body("gpt-4o-mini"),
            pid=budgeted.pid,
        ),
        Target(  # a reference: what of the router's cost is its addons'
            "bare, patched",
            patched_url,
            chat,
            okey,
            chat_body("gpt-4o-mini"),
            pid=patched_pid,
        ),
    ]
    gateway_rows = [
        Target("direct anthropic", aurl, "/v1/messages", akey, messages_body("claude-x")),
        Target(
            "bare mitmproxy",
            bares["anthropic"],
            "/v1/messages",
            akey,
            messages_body("claude-x"),
            pid=bare_pids["anthropic"],
        ),
        Target(
            "iron router native",
            rurl,
            "/v1/messages",
            token,
            messages_body("claude-x"),
            pid=router.pid,
        ),
        Target("iron gateway", rurl, chat, token, chat_body("claude-x"), pid=router.pid),
    ]
    with tempfile.TemporaryDirectory() as tmpdir:
        for rows, kind in ((openai_rows, "openai"), (gateway_rows, "gateway")):
            if args.only in (None, kind):
                measure(rows, conc, args, Path(tmpdir))
        if args.only in (None, "openai") and 10 in conc and args.pair_rounds:
            measure_pair(openai_rows[2], openai_rows[3], args.pair_rounds, 3.0, Path(tmpdir))

    if args.only in (None, "openai"):
        report("OpenAI", openai_rows, conc, args.duration)
    if args.only in (None, "gateway"):
        report("Gateway", gateway_rows, conc, args.duration)
    targets: list[tuple[str, str, str]] = []
    print("\nRatios (req/s, then added latency)")
    if args.only in (None, "openai"):
        ratios("router / bare", openai_rows[2], openai_rows[1], conc)
        ratios("router / direct", openai_rows[2], openai_rows[0], conc)
        ratios("router+budget / bare", openai_rows[3], openai_rows[1], conc)
        ratios("router / bare, patched", openai_rows[2], openai_rows[4], conc)
        targets = throughput_targets(openai_rows, conc)
    if args.only in (None, "gateway"):
        ratios("gateway / bare", gateway_rows[3], gateway_rows[1], conc)
        ratios("gateway / direct", gateway_rows[3], gateway_rows[0], conc)
        ratios("gateway / router native", gateway_rows[3], gateway_rows[2], conc)
    print("(bare mitmproxy buffers SSE unless told to stream: its TTFB is its total time)")
    return targets


RPS_TARGET = 0.80  # router req/s over bare mitmproxy's, at concurrency 10
P50_TARGET_MS = 0.3  # router's added p50 over bare mitmproxy's, at concurrency 1
BUDGET_WITHIN = 0.05  # the router with a budget, within 5 % of the router without


def throughput_targets(rows: list[Target], conc: list[int]) -> list[tuple[str, str, str]]:
    """The issue-11 throughput targets, from the OpenAI rows (direct, bare, router, +budget)."""
    bare, router, budgeted = rows[1].results, rows[2].results, rows[3].results
    out = []
    if 10 in conc:
        for name, r in (("router", router), ("router+budget", budgeted)):
            ratio = r[10]["rps"] / bare[10]["rps"]
            out.append(
                (
                    f"req/s at c=10, {name} / bare mitmproxy",
                    f"{ratio:.2f} (target >= {RPS_TARGET:.2f})",
                    "met" if ratio >= RPS_TARGET else "NOT met",
                )
            )
        pair = rows[2].results.get("pair")
        if pair is not None:  # the long paired runs: a 5 % difference is within reach
            within = pair["budget_rps"] / pair["rps"]
            cpu = pair["budget_cpu_ms"] / pair["cpu_ms"]
            figure = f"{within:.2f} (target >= {1 - BUDGET_WITHIN:.2f}); CPU/req {cpu:.2f}x"
            source = f" ({pair['rounds']} paired runs)"
        else:
            within = budgeted[10]["rps"] / router[10]["rps"]
            figure, source = f"{within:.2f} (target >= {1 - BUDGET_WITHIN:.2f})", ""
        out.append(
            (
                f"req/s at c=10, router+budget / router{source}",
                figure,
                "met" if within >= 1 - BUDGET_WITHIN else "NOT met",
            )
        )
    if 1 in conc:
        for name, r in (("router", router), ("router+budget", budgeted)):
            added = r[1]["p50"] - bare[1]["p50"]
            out.append(
                (
                    f"p50 at c=1, {name} over bare mitmproxy",
                    f"{added:+.2f} ms (target <= +{P50_TARGET_MS:.1f} ms)",
                    "met" if added <= P50_TARGET_MS else "NOT met",
                )
            )
    return out


def start_bare(upstream: str, stops: list, patched: bool = False) -> tuple[int, str]:
    """Bare mitmproxy (the router's master without the iron addons, mitmproxy's code as it
    comes; with ``patched``, with the router process's changes to mitmproxy) in reverse mode
    in front of ``upstream``: its pid and URL."""
    proc, info = start_proxy_process(
        {"mode": [f"reverse:{upstream}"], "listen_host": "127.0.0.1", "listen_port": 0},
        bare=True,
        patched=patched,
    )
    stops.append(lambda: stop_proxy_process(proc))
    return info["pid"], f"http://127.0.0.1:{info['port']}"


# -- memory ----------------------------------------------------------------------------------

CONTROL_BACKLOG = 100  # asyncio's default, what mitmproxy's listeners had
RSS_TARGET_MB = {"router": 110.0, "router+budget": 150.0}
CONNECT_TARGET_MS = 100.0


def rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (the peak) of a process, in MB (MiB)."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def start_router_with_backlog(
    backlog: int, upstreams: dict[str, str], stops: list
) -> tuple[int, str]:
    """The iron router's process with its listen backlog forced to ``backlog`` (this script
    re-run as the child, ``--child-backlog``): the burst's control row. Its pid and URL."""
    options = {
        "mode": [f"reverse:{upstreams['openai']}"],
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "confdir": str(Path(os.environ["IRON_STATE_DIR"]) / "certs"),
        "iron_token": "direct",
        "iron_openai_key": OPENAI_KEY,
        "iron_anthropic_key": ANTHROPIC_KEY,
        "iron_openai_upstream": upstreams["openai"],
        "iron_anthropic_upstream": upstreams["anthropic"],
        "iron_state_dir": str(Path(os.environ["IRON_STATE_DIR"]) / f"backlog-{backlog}"),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-backlog", str(backlog)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
    stops.append(lambda: stop_proxy_process(proc))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(options).encode() + b"\n")
    proc.stdin.flush()
    reply = json.loads(_read_line(proc, 30))
    if "port" not in reply:
        raise SystemExit(f"control router did not start: {reply}")
    return reply["pid"], f"http://127.0.0.1:{reply['port']}"


def child_with_backlog(backlog: int) -> None:
    """Run as the router process, every listener given ``backlog`` instead of listen.BACKLOG."""
    from iron_runtime import proxy_process
    from iron_runtime.addons import listen

    original = listen.relisten
    listen.relisten = lambda server, _=0: original(server, backlog)
    sys.argv = sys.argv[:1]
    proxy_process.main()


def memory_and_burst(
    args, sections: set[str], upstreams: dict[str, str], tmp: Path, stops: list
) -> list[tuple[str, str, str]]:
    """Fresh processes: a router without a budget, one with a budget, bare mitmproxy. The
    memory load runs first, then the bursts (whose RSS is shown apart)."""
    keys = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}
    router = LlmRouter(provider_keys=keys, upstreams=upstreams)
    stops.append(router.stop)
    budgeted = LlmRouter(provider_keys=keys, upstreams=upstreams, budget=1_000_000)
    stops.append(budgeted.stop)
    bare_pid, bare_url = start_bare(upstreams["openai"], stops)
    token = {"Authorization": f"Bearer {router.api_key}"}
    chat = "/v1/chat/completions"
    procs = {
        "router": (router.pid, router.base_url.removesuffix("/v1"), token),
        "router+budget": (budgeted.pid, budgeted.base_url.removesuffix("/v1"), token),
        "bare mitmproxy": (bare_pid, bare_url, {"Authorization": f"Bearer {OPENAI_KEY}"}),
    }
    time.sleep(1.0)  # let start-up settle (a budget's vocabulary warm-up, say)
    for pid, _, _ in procs.values():
        pin_proxy(pid)
    start_rss = {name: rss_mb(pid)[0] for name, (pid, _, _) in procs.items()}
    targets: list[tuple[str, str, str]] = []

    if "memory" in sections:
        n = args.requests
        print(f"\nMemory: RSS of each proxy process after {n:,} requests", file=sys.stderr)
        print(f"\nMemory: RSS (VmRSS of the proxy process) after {n:,} requests (wrk -c10)")
        print(f"{'process':<18}{'at start MB':>13}{'after MB':>10}{'peak MB':>9}{'requests':>10}")
        for name, (pid, url, headers) in procs.items():
            if name == "bare mitmproxy":
                loads = [(Target(name, url, chat, headers, chat_body("gpt-4o-mini")), n)]
            else:
                anthropic = Target(
                    name,
                    url,
                    "/v1/messages",
                    token,
                    messages_body("claude-sonnet-4-6"),
                )
                openai_n = n * 4 // 5
                loads = [
                    (Target(name, url, chat, headers, chat_body("gpt-4o-mini")), openai_n),
                    (anthropic, n - openai_n),
                ]
            done, problems = 0, []
            for t, count in loads:
                r = wrk_count(t, 10, count, args.memory_seconds, tmp)
                done += r["requests"]
                if r["bad"] or r["errors"]:
                    problems.append(f"{t.path}: {r['bad']} non-2xx {r['errors']}")
            rss, peak = rss_mb(pid)
            print(f"{name:<18}{start_rss[name]:>13.1f}{rss:>10.1f}{peak:>9.1f}{done:>10,}")
            if problems:
                print(f"{'':<18}errors: {'; '.join(problems)}")
            label = f"RSS after {done:,} requests, {name}"
            if name in RSS_TARGET_MB:
                limit = RSS_TARGET_MB[name]
                verdict = "met" if rss <= limit and not problems else "NOT met"
                targets.append((label, f"{rss:.1f} MB (target <= {limit:.0f} MB)", verdict))
            else:
                targets.append((label, f"{rss:.1f} MB", "(reference)"))

    if "burst" in sections:
        body = {
            **chat_body("gpt-4o-mini"),
            "stream": True,
            "messages": [{"role": "user", "content": " ".join(["word"] * 20)}],
        }
        control_pid, control = start_router_with_backlog(CONTROL_BACKLOG, upstreams, stops)
        pin_proxy(control_pid)
        rows = [
            ("router", procs["router"]),
            (f"router, backlog {CONTROL_BACKLOG}", (control_pid, control, token)),
            ("bare mitmproxy", procs["bare mitmproxy"]),
        ]
        for _, (_, url, headers) in rows:  # a first request each, out of the measure
            burst(url, chat, headers, body, 5, 10)
        results = {}
        for name, (_, url, headers) in rows:
            print(f"  burst of {args.streams} streams: {name}", file=sys.stderr, flush=True)
            results[name] = burst(url, chat, headers, body, args.streams, args.burst_seconds)
        print(
            f"\nBurst: {args.streams:,} streamed chat completions opened at once "
            "(20 chunks, 5 ms apart; bare mitmproxy buffers SSE)"
        )
        print(
            f"{'target':<22}{'backlog':>8}{'ok':>6}{'failed':>8}{'opened in ms':>14}"
            f"{'connect p50':>13}{'p99':>8}{'max ms':>8}{'>100ms':>8}"
            f"{'1st byte p50':>14}{'p99':>8}{'max ms':>8}{'RSS MB':>8}"
        )
        for name, (pid, url, _) in rows:
            r = results[name]
            c, f = r["connect"], r["first_byte"]
            print(
                f"{name:<22}{listen_backlog(url):>8}{r['ok']:>6}{r['failed']:>8}{r['opened_ms']:>14.1f}"
                f"{c['p50']:>13.1f}{c['p99']:>8.1f}{c['max']:>8.1f}{r['slow_connects']:>8}"
                f"{f['p50']:>14.1f}{f['p99']:>8.1f}{f['max']:>8.1f}{rss_mb(pid)[0]:>8.1f}"
            )
            if r["errors"]:
                print(f"{'':<22}failures: {r['errors']}")
            met = r["failed"] == 0 and c["max"] <= CONNECT_TARGET_MS
            targets.append(
                (
                    f"burst of {args.streams:,} streams, {name}",
                    f"{r['failed']} failed, connect max {c['max']:.0f} ms p99 {c['p99']:.0f} ms"
                    " (target 0, <= 100 ms)",
                    ("met" if met else "NOT met") if name == "router" else "(reference)",
                )
            )
        print("(connect: connect() until the socket is writable; first byte: from connect())")
    return targets


# -- burst -----------------------------------------------------------------------------------


@dataclass
class Stream:
    sock: socket.socket
    started: float
    connected: float | None = None
    first_byte: float | None = None
    head: bytes = b""
    tail: bytes = b""
    error: str | None = None


def burst(url: str, path: str, headers: dict[str, str], body: dict, n: int, seconds: float):
    """Open ``n`` connections at once (non-blocking connects issued back to back, the ready
    ones polled every 16 connects), send each its streamed request as soon as it is
    connected, read every answer to the end, all in one epoll loop bounded by ``seconds``.
    A stream succeeds with a 200 that ends with ``data: [DONE]`` and the connection closed
    by the server."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nx-emulator-chunk-delay: 0.005\r\n"
        f"Connection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    sel = selectors.DefaultSelector()
    streams: list[Stream] = []
    live = 0

    def handle(timeout: float) -> None:
        nonlocal live
        for key, _ in sel.select(timeout):
            st: Stream = key.data
            now = time.perf_counter()
            if st.connected is None:
                err = st.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    st.error = f"connect: {os.strerror(err)}"
                else:
                    st.connected = now
                    try:
                        st.sock.sendall(request)  # small: fits the send buffer
                        sel.modify(st.sock, selectors.EVENT_READ, st)
                        continue
                    except OSError as e:
                        st.error = f"send: {e}"
            else:
                try:
                    data = st.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data, st.error = b"", f"recv: {e}"
                if data:
                    if st.first_byte is None:
                        st.first_byte = now
                    if len(st.head) < 64:
                        st.head += data[:64]
                    st.tail = (st.tail + data)[-64:]
                    continue
            sel.unregister(st.sock)
            st.sock.close()
            live -= 1

    t0 = time.perf_counter()
    deadline = t0 + seconds
    try:
        for i in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            st = Stream(sock, time.perf_counter())
            streams.append(st)
            err = sock.connect_ex((host, int(port)))
            if err not in (0, errno.EINPROGRESS):
                st.error = f"connect: {os.strerror(err)}"
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_WRITE, st)
            live += 1
            if i % 16 == 15:  # as a client would: send on the connections already made
                handle(0)
        opened_ms = (time.perf_counter() - t0) * 1000
        while live and time.perf_counter() < deadline:
            handle(min(0.5, max(0.0, deadline - time.perf_counter())))
    finally:
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
    errors: dict[str, int] = {}
    connect, first = [], []
    slow = 0
    for st in streams:
        if st.connected is not None:
            connect.append((st.connected - st.started) * 1000)
            slow += connect[-1] > CONNECT_TARGET_MS
        if st.error is None:
            if st.connected is None:
                st.error = "not connected in time"
            elif not st.head.startswith(b"HTTP/1.1 200"):
                st.error = f"answer {st.head[:12]!r}" if st.head else "no answer"
            elif b"[DONE]" not in st.tail:
                st.error = "stream incomplete"
        if st.first_byte is not None:
            first.append((st.first_byte - st.started) * 1000)
        if st.error is not None:
            kind = st.error.split(":")[0] if ":" in st.error else st.error
            errors[kind] = errors.get(kind, 0) + 1
    failed = sum(errors.values())
    return {
        "ok": n - failed,
        "failed": failed,
        "errors": ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())),
        "opened_ms": opened_ms,
        "connect": _stats(connect),
        "first_byte": _stats(first),
        "slow_connects": slow,
    }


def listen_backlog(url: str) -> str:
    """The listen backlog of the socket behind ``url`` (``ss``: Send-Q of a listener)."""
    port = url.rsplit(":", 1)[1]
    if not shutil.which("ss"):
        return "?"
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    fields = out.stdout.split()
    return fields[2] if len(fields) > 2 else "?"


# -- outbox ----------------------------------------------------------------------------------

RETENTION_DAYS = 7  # the router's default (iron_retention_days)
OUTBOX_DAYS = 30  # simulated days the recorded requests span
BOUNDED_GROWTH = 1.10  # the last half of the run may grow the file by this much at most


def outbox_size(events: int) -> list[tuple[str, str, str]]:
    """``scripts/bench_outbox.py``: ``events`` requests over 30 simulated days, recorded
    without a control server, in an outbox with the default 7-day retention and in one that
    keeps everything. Bounded means the retained file stops growing once the retention is
    full: over the last half of the run (15 days, past the first 7) it grows by at most
    ``BOUNDED_GROWTH``, and its ``stats`` totals equal those of the outbox that kept all."""
    print(f"\nOutbox: size after {events:,} requests (scripts/bench_outbox.py)", flush=True)
    script = Path(__file__).resolve().parent / "bench_outbox.py"
    out = subprocess.run(
        [sys.executable, str(script), "--events", str(events), "--days", str(OUTBOX_DAYS)]
        + ["--retention-days", str(RETENTION_DAYS), "--max-seconds", "900"],
        capture_output=True,
        text=True,
        timeout=1000,
    )
    print(out.stdout, end="")
    progress = [
        (int(m.group(1).replace(",", "")), _mb(m.group(2)), _mb(m.group(3)))
        for m in re.finditer(r"^\s*([\d,]+)\s+([\d.,]+) MB\s+([\d.,]+) MB\s*$", out.stdout, re.M)
    ]
    final = re.search(
        rf"retention {RETENTION_DAYS} d\s+([\d.,]+) MB\s+\d+\s+[\d,]+\s+[\d,]+\s+[\d,]+\s+(\w+)",
        out.stdout,
    )
    whole = re.search(r"no retention\s+([\d.,]+) MB", out.stdout)
    if out.returncode not in (0, 1) or not progress or not final or not whole:
        return [(f"outbox after {events:,} requests", "the run failed", "NOT met")]
    written = progress[-1][0]
    half = min(progress, key=lambda p: abs(p[0] - written / 2))
    growth = progress[-1][2] / max(half[2], 1e-9)
    size = _mb(final.group(1))
    bounded = growth <= BOUNDED_GROWTH and final.group(2) == "same" and written == events
    return [
        (
            f"outbox after {written:,} requests, {RETENTION_DAYS}-day retention",
            f"{size:.1f} MB (all kept: {whole.group(1)} MB); "
            f"last half x{growth:.2f} (<= {BOUNDED_GROWTH:.2f})",
            "met" if bounded else "NOT met",
        )
    ]


def _mb(text: str) -> float:
    """A size as ``bench_outbox.py`` prints it ("1,068.0"), in MB."""
    return float(text.replace(",", ""))


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    values = sorted(values)
    return {
        "p50": values[len(values) // 2],
        "p99": values[min(len(values) - 1, math.ceil(len(values) * 0.99) - 1)],
        "max": values[-1],
    }


def token_count_timings() -> None:
    """How long the reservation's token count takes, on the router's hot path."""
    from iron_runtime.tokens import count_request, encoding

    encoding("o200k_base")
    encoding("cl100k_base")
    print("\nReservation token count (iron_runtime.tokens.count_request, median of 200)")
    for label, words in (
        ("short prompt", 5),
        ("2k-token prompt", 2_000),
        ("100k-token prompt", 100_000),
    ):
        body = {
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": " ".join(["token"] * words)},
            ],
        }
        runs = 200 if words < 50_000 else 10
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            count_request(body, "gpt-4o", False)
            times.append(time.perf_counter() - t0)
        size = len(json.dumps(body))
        where = "on a worker thread" if size > 64 * 1024 else "inline"
        print(f"  {label:<18} {statistics.median(times) * 1e6:>10.1f} µs   ({where})")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-backlog":
        child_with_backlog(int(sys.argv[2]))
    else:
        main()
