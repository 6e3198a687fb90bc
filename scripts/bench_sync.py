#!/usr/bin/env python3
"""Benchmark: analytics events/s delivered by the sync worker to an emulated control server
that takes ``--latency`` seconds (40 ms by default) to answer each POST.

    .venv/bin/python scripts/bench_sync.py [--latency 0.04] [--events 4000]
                                           [--concurrency 1,16,32,64] [--max-seconds 20]

The control-server emulator runs in its own process on 127.0.0.1 (so that it does not share
this process's GIL with the senders). For each concurrency a fresh outbox is filled with a
backlog and one sync pass delivers it; concurrency 1 is the one-event-at-a-time sync the
router had before, measured in the same run as the baseline, and every other row is also
given as a ratio to it. The backlog of a row is scaled to what that concurrency can send in
``--max-seconds`` (at most ``--events``), and every pass ends by its deadline. Nothing is
asserted: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from iron_runtime.analytics import LlmRequestCompleted, Outbox, SyncWorker

TOKEN = "ic_bench_agent"

SERVER = textwrap.dedent("""
    import asyncio, sys
    from iron_runtime.testing import ControlServerEmulator
    emu = ControlServerEmulator(record=False)
    emu.latency = float(sys.argv[1])
    emu.add_agent(sys.argv[2], "openai", "sk-bench", 10**12)
    asyncio.run(emu.serve_forever(lambda: print(emu.url, flush=True)))
""")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(latency), TOKEN],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = proc.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"the control-server emulator did not start: {url!r}")
    return proc, url


def one_run(url: str, concurrency: int, events: int, max_seconds: float) -> tuple[int, float]:
    """Delivers a backlog of ``events``; returns (events sent, seconds)."""
    with tempfile.TemporaryDirectory(prefix="iron-bench-sync-") as folder:
        outbox = Outbox(Path(folder) / "analytics.sqlite3")
        outbox.add(
            [
                LlmRequestCompleted(provider="openai", model="gpt-4o", input_tokens=9)
                for _ in range(events)
            ]
        )
        worker = SyncWorker(outbox, url, TOKEN, concurrency=concurrency)
        t0 = time.perf_counter()
        worker.sync_once(deadline=time.monotonic() + max_seconds)
        elapsed = time.perf_counter() - t0
        worker.stop(1.0)
        sent = outbox.counts()["sent"]
        outbox.close()
    return sent, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.04, help="server latency, seconds")
    parser.add_argument("--events", type=int, default=4000, help="largest backlog of a row")
    parser.add_argument("--concurrency", default="1,16,32,64", help="comma-separated levels")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="bound of each row")
    args = parser.parse_args()
    levels = sorted({int(c) for c in args.concurrency.split(",")} | {1})
    proc, url = start_server(args.latency)
    try:
        print(f"control-server emulator at {url}, {args.latency * 1000:.0f} ms per answer")
        print(f"{'concurrency':>11} {'events':>7} {'seconds':>8} {'events/s':>9} {'ratio':>7}")
        baseline = None
        for c in levels:
            # About a quarter of what this concurrency could send in the bound, at most --events.
            expected = c / args.latency if args.latency > 0 else 10_000
            n = max(50, min(args.events, int(expected * args.max_seconds / 4)))
            sent, elapsed = one_run(url, c, n, args.max_seconds)
            rate = sent / elapsed if elapsed else 0.0
            baseline = baseline or rate
            note = "" if sent == n else f"  (only {sent} of {n} by the deadline)"
            label = f"{c}" + (" (old)" if c == 1 else "")
            ratio = rate / baseline
            print(f"{label:>11} {sent:>7} {elapsed:>8.2f} {rate:>9.0f} {ratio:>6.1f}x{note}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
