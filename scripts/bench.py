#!/usr/bin/env python3
"""Benchmark: direct to the emulator vs bare mitmproxy vs the iron router, in one run.

    .venv/bin/python scripts/bench.py [--duration 5] [--stream-requests 40]

Every target answers from the same OpenAI emulator, which runs in its own process. The
non-streamed load comes from ``wrk`` (Debian package ``wrk``) in another process, at
concurrency 1, 10 and 50; streamed requests are timed by this script (time to first byte and
per-chunk cost). Figures are printed as a table with the ratios
router/bare and router/direct; nothing is asserted, since this machine is shared and noisy.
Every run is bounded by ``--duration`` seconds.

Streams: time to first byte is measured on answers whose chunks come 5 ms apart (so the
first chunk is alone on the wire); the per-chunk cost on 200-chunk answers sent at once.
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
from pathlib import Path

from iron_runtime import LlmRouter
from iron_runtime.launcher import start_proxy_process, stop_proxy_process

KEY = "sk-bench-openai-key-0123456789"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello in one word"}]}
STREAM_WORDS = 200


def start_emulator(
    reply: str | None = None, chunk_delay: float = 0.0
) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "iron_runtime.testing",
        "openai",
        "--api-key",
        KEY,
        "--chunk-delay",
        str(chunk_delay),
    ]
    if reply:
        cmd += ["--reply", reply]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, url


def wrk(url: str, token: str, connections: int, duration: float, tmp: Path) -> dict:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            "-s",
            str(script),
            url + "/v1/chat/completions",
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


def stream_timings(
    url: str, token: str, words: int, pause: float, count: int, deadline: float
) -> dict:
    """Median time to first event and to the end of streamed answers, one request at a time.

    The emulator echoes the prompt, so ``words`` words give that many chunks; ``pause`` is
    how long it waits between chunks (sent as ``x-emulator-chunk-delay``).
    """
    host, port = url.removeprefix("http://").split(":")
    prompt = " ".join(["word"] * (words - 1))
    body = json.dumps(
        {**BODY, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"x-emulator-chunk-delay: {pause}\r\n"
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
                    raise RuntimeError("connection closed mid-stream")
                buf += chunk
                if first is None and b"data:" in buf:
                    first = time.perf_counter()
            total.append(time.perf_counter() - t0)
            ttfb.append(first - t0)
    finally:
        sock.close()
    return {
        "ttfb": statistics.median(ttfb) * 1000,
        "total": statistics.median(total) * 1000,
        "n": len(total),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--stream-requests", type=int, default=40)
    ap.add_argument("--concurrency", default="1,10,50")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    conc = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("IRON_STATE_DIR", tempfile.mkdtemp(prefix="iron-bench-"))

    emu, emu_url = start_emulator()
    results: dict[str, dict] = {}
    bare_proc = router = None
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            bare_proc, bare_port = start_proxy_process(
                {"mode": [f"reverse:{emu_url}"], "listen_host": "127.0.0.1", "listen_port": 0},
                bare=True,
            )
            router = LlmRouter(provider_key=KEY, upstreams={"openai": emu_url})
            print(f"router started in {router.startup_seconds:.2f} s", file=sys.stderr)
            targets = {
                "direct": (emu_url, KEY),
                "bare mitmproxy": (f"http://127.0.0.1:{bare_port}", KEY),
                "iron router": (router.base_url.removesuffix("/v1"), router.api_key),
            }
            for name, (url, token) in targets.items():
                wrk(url, token, 10, 1, tmp)  # warm-up
                row = {c: wrk(url, token, c, args.duration, tmp) for c in conc}
                limit = time.monotonic() + 60
                row["paced"] = stream_timings(url, token, 20, 0.005, args.stream_requests, limit)
                row["burst"] = stream_timings(
                    url, token, STREAM_WORDS, 0.0, args.stream_requests, limit
                )
                results[name] = row
                print(f"  measured {name}", file=sys.stderr, flush=True)
    finally:
        if router:
            router.stop()
        if bare_proc:
            stop_proxy_process(bare_proc)
        emu.terminate()
        emu.wait(5)

    print(f"\nNon-streamed POST /v1/chat/completions, wrk -t1, {args.duration:.0f} s per cell")
    print(
        f"{'target':<16}"
        + "".join(f"{'c=' + str(c) + ' req/s':>13}{'p50 ms':>9}{'p99 ms':>9}" for c in conc)
    )
    for name, row in results.items():
        cells = "".join(
            f"{row[c]['rps']:>13.0f}{row[c]['p50']:>9.2f}{row[c]['p99']:>9.2f}" for c in conc
        )
        print(f"{name:<16}{cells}")
        bad = [
            f"c={c}: {row[c]['bad']} non-2xx {row[c]['errors']}"
            for c in conc
            if row[c]["bad"] or row[c]["errors"]
        ]
        if bad:
            print(f"{'':<16}errors: {'; '.join(bad)}")
    r, b, d = results["iron router"], results["bare mitmproxy"], results["direct"]
    print("\nRatios")
    for c in conc:
        print(
            f"  c={c:<3} req/s router/bare {r[c]['rps'] / b[c]['rps']:.2f}  "
            f"router/direct {r[c]['rps'] / d[c]['rps']:.2f}   "
            f"p50 router-bare {r[c]['p50'] - b[c]['p50']:+.2f} ms"
        )
    n = r["paced"]["n"]
    print(f"\nStreamed answers, one request at a time, median of {n}")
    print(
        f"{'target':<16}{'TTFB ms':>9}{'(20 chunks, 5 ms apart)':>25}"
        f"{'total ms':>10}{f'({STREAM_WORDS} chunks, no pause)':>27}"
    )
    for name, row in results.items():
        print(f"{name:<16}{row['paced']['ttfb']:>9.2f}{'':>25}{row['burst']['total']:>10.2f}")
    print(
        f"  added TTFB: router-direct {r['paced']['ttfb'] - d['paced']['ttfb']:+.2f} ms "
        "(bare mitmproxy buffers SSE unless told to stream, hence its TTFB)"
    )
    per_chunk = (r["burst"]["total"] - d["burst"]["total"]) / STREAM_WORDS * 1000
    print(f"  per-chunk cost: router-direct {per_chunk:+.1f} µs")


if __name__ == "__main__":
    main()
