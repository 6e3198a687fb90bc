#!/usr/bin/env python3
"""Benchmark: direct to the emulator vs bare mitmproxy vs the iron router, in one run.

    .venv/bin/python scripts/bench.py [--duration 2] [--rounds 5] [--only openai|gateway]

Each emulator (OpenAI, Anthropic) runs in its own process; so do the bare mitmproxy (the
same lean master, without the iron addons) and the router. Non-streamed load comes from
``wrk`` (Debian package ``wrk``) in another process, at concurrency 1, 10 and 50; streamed
requests are timed by this script, one at a time: time to first byte on answers whose
chunks come 5 ms apart (the first chunk is alone on the wire), and the per-chunk cost on
200-chunk answers sent at once. Figures are printed with the ratios router/bare and
router/direct; nothing is asserted, since this machine is shared and noisy. Every run is
bounded by ``--duration`` seconds.

Rows:
  openai:  direct, bare mitmproxy, iron router       (OpenAI chat.completions)
  gateway: direct Anthropic, bare mitmproxy, iron router native /v1/messages, and
           iron gateway (OpenAI chat.completions for a Claude model, translated both ways)
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
from iron_runtime.launcher import start_proxy_process, stop_proxy_process

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


def chat_body(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}]}


def messages_body(model: str) -> dict:
    return {**chat_body(model), "max_tokens": 100}


def start_emulator(provider: str, key: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "iron_runtime.testing", provider, "--api-key", key]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, url


def wrk(t: Target, connections: int, duration: float, tmp: Path) -> dict:
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
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "p50": pct("50"),
        "p99": pct("99"),
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1) if errors else "",
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
                runs[t.name].append(wrk(t, c, args.duration, tmp))
        for t in targets:
            cell = sorted(runs[t.name], key=lambda r: r["rps"])[len(runs[t.name]) // 2]
            t.results[c] = cell
    for t in targets:
        limit = time.monotonic() + 60
        t.results["paced"] = stream_timings(t, 20, 0.005, args.stream_requests, limit)
        t.results["burst"] = stream_timings(t, STREAM_WORDS, 0.0, args.stream_requests, limit)
        print(f"  measured {t.name}", file=sys.stderr, flush=True)


def report(title: str, targets: list[Target], conc: list[int], duration: float) -> None:
    print(f"\n{title}: non-streamed, wrk -t1, median of rounds of {duration:.0f} s per cell")
    print(
        f"{'target':<22}"
        + "".join(f"{'c=' + str(c) + ' req/s':>13}{'p50 ms':>9}{'p99 ms':>9}" for c in conc)
    )
    for t in targets:
        r = t.results
        print(
            f"{t.name:<22}"
            + "".join(f"{r[c]['rps']:>13.0f}{r[c]['p50']:>9.2f}{r[c]['p99']:>9.2f}" for c in conc)
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
    print(
        f"  {label:<28} req/s {cells}   p50 c={conc[0]} {p50:+.2f} ms   "
        f"TTFB {ttfb:+.2f} ms   per chunk {chunk:+.1f} µs"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=5, help="wrk runs per cell (median kept)")
    ap.add_argument("--stream-requests", type=int, default=40)
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--only", choices=["openai", "gateway"], default=None)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    conc = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("IRON_STATE_DIR", tempfile.mkdtemp(prefix="iron-bench-"))

    stops = []
    try:
        oemu, ourl = start_emulator("openai", OPENAI_KEY)
        aemu, aurl = start_emulator("anthropic", ANTHROPIC_KEY)
        stops += [oemu.kill, aemu.kill]
        keys = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}
        upstreams = {"openai": ourl, "anthropic": aurl}
        router = LlmRouter(provider_keys=keys, upstreams=upstreams)
        stops.append(router.stop)
        budgeted = LlmRouter(provider_keys=keys, upstreams=upstreams, budget=1_000_000)
        stops.append(budgeted.stop)
        print(f"router started in {router.startup_seconds:.2f} s", file=sys.stderr)
        rurl = router.base_url.removesuffix("/v1")
        bares = {}
        for name, url in (("openai", ourl), ("anthropic", aurl)):
            proc, info = start_proxy_process(
                {"mode": [f"reverse:{url}"], "listen_host": "127.0.0.1", "listen_port": 0},
                bare=True,
            )
            stops.append(lambda p=proc: stop_proxy_process(p))
            bares[name] = f"http://127.0.0.1:{info['port']}"

        chat = "/v1/chat/completions"
        okey = {"Authorization": f"Bearer {OPENAI_KEY}"}
        akey = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
        token = {"Authorization": f"Bearer {router.api_key}"}
        openai_rows = [
            Target("direct", ourl, chat, okey, chat_body("gpt-4o-mini")),
            Target("bare mitmproxy", bares["openai"], chat, okey, chat_body("gpt-4o-mini")),
            Target("iron router", rurl, chat, token, chat_body("gpt-4o-mini")),
            Target(
                "iron router+budget",
                budgeted.base_url.removesuffix("/v1"),
                chat,
                token,
                chat_body("gpt-4o-mini"),
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
            ),
            Target("iron router native", rurl, "/v1/messages", token, messages_body("claude-x")),
            Target("iron gateway", rurl, chat, token, chat_body("claude-x")),
        ]
        with tempfile.TemporaryDirectory() as tmpdir:
            for rows, kind in ((openai_rows, "openai"), (gateway_rows, "gateway")):
                if args.only in (None, kind):
                    measure(rows, conc, args, Path(tmpdir))
    finally:
        for stop in reversed(stops):
            stop()

    if args.only in (None, "openai"):
        report("OpenAI", openai_rows, conc, args.duration)
    if args.only in (None, "gateway"):
        report("Gateway", gateway_rows, conc, args.duration)
    print("\nRatios (req/s, then added latency)")
    if args.only in (None, "openai"):
        ratios("router / bare", openai_rows[2], openai_rows[1], conc)
        ratios("router / direct", openai_rows[2], openai_rows[0], conc)
        ratios("router+budget / bare", openai_rows[3], openai_rows[1], conc)
    if args.only in (None, "gateway"):
        ratios("gateway / bare", gateway_rows[3], gateway_rows[1], conc)
        ratios("gateway / direct", gateway_rows[3], gateway_rows[0], conc)
        ratios("gateway / router native", gateway_rows[3], gateway_rows[2], conc)
    print("(bare mitmproxy buffers SSE unless told to stream: its TTFB is its total time)")
    token_count_timings()


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
    main()
