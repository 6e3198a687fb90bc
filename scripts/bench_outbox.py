#!/usr/bin/env python3
"""Benchmark: the size of the analytics outbox after many requests, without and with a
retention.

    .venv/bin/python scripts/bench_outbox.py [--events 1000000] [--days 30]
                                             [--retention-days 7,1] [--max-seconds 600]

``--events`` events (typical ones: a few models, one in 20 failed) are spread evenly over
``--days`` simulated days and written in batches of ``--batch`` through the writer's own
path (``Outbox.rows`` then ``Outbox.insert``, one transaction a batch), the same rows into
one outbox per column: no retention (the router before retention: every event kept), and
one per ``--retention-days`` without a control server (``keep_pending=False``: events older
than the retention are folded into hourly totals), pruned every ``--prune-every`` simulated
seconds as the router's writer thread does. Time is simulated (``now_ms``), nothing sleeps.

Printed: the size on disk (database and write-ahead log) every tenth of the run, then, after
closing, the file size, the events kept, the hourly rows, and whether ``stats()`` totals
agree with the outbox that kept everything. The run stops early (and says so) after
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from iron_runtime.analytics import LlmRequestCompleted, LlmRequestFailed, Outbox

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("openai", "o3-mini"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-3-5-haiku-20241022"),
]


def batch_of(rng: random.Random, first: int, n: int, start_ms: int, step_ms: float) -> list:
    events: list = []
    for i in range(first, first + n):
        provider, model = MODELS[rng.randrange(len(MODELS))]
        common = {
            "provider": provider,
            "model": model,
            "timestamp_ms": start_ms + int(i * step_ms),
            "request_id": f"req_{rng.getrandbits(96):024x}",
            "latency_ms": round(rng.uniform(200, 4000), 1),
            "stream": i % 2 == 0,
        }
        if i % 20 == 0:
            events.append(
                LlmRequestFailed(
                    **common,
                    error_code="rate_limit_error",
                    error_message="Rate limit reached for requests",
                    status=429,
                )
            )
        else:
            tin, tout = rng.randrange(50, 4000), rng.randrange(10, 800)
            events.append(
                LlmRequestCompleted(
                    **common,
                    ttft_ms=round(rng.uniform(100, 900), 1) if i % 2 == 0 else None,
                    input_tokens=tin,
                    output_tokens=tout,
                    cached_tokens=tin // 4,
                    cost_micros=tin * 3 + tout * 12,
                )
            )
    return events


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--days", type=float, default=30.0, help="simulated days the events span")
    p.add_argument("--retention-days", default="7,1", help="comma-separated retentions")
    p.add_argument("--batch", type=int, default=1000, help="events a transaction")
    p.add_argument("--prune-every", type=float, default=600.0, help="simulated seconds")
    p.add_argument("--max-seconds", type=float, default=600.0)
    p.add_argument("--dir", help="where to write the outboxes (default: a temporary folder)")
    args = p.parse_args()
    retentions = [float(r) for r in args.retention_days.split(",") if r.strip()]

    with tempfile.TemporaryDirectory(prefix="iron-bench-outbox-", dir=args.dir) as folder:
        columns: list[tuple[str, Outbox]] = [
            ("no retention", Outbox(Path(folder) / "all.sqlite3", retention_s=None))
        ]
        for days in retentions:
            columns.append(
                (
                    f"retention {days:g} d",
                    Outbox(
                        Path(folder) / f"retention-{days:g}d.sqlite3",
                        retention_s=days * 86_400,
                        keep_pending=False,
                    ),
                )
            )
        rng = random.Random(1)
        span_ms = args.days * 86_400_000
        step_ms = span_ms / max(args.events, 1)
        start_ms = int(time.time() * 1000 - span_ms)
        prune_ms = int(args.prune_every * 1000)
        next_prune = start_ms + prune_ms
        prune_seconds = 0.0
        began = time.monotonic()
        header = f"{'events':>10}  " + "  ".join(f"{name:>16}" for name, _ in columns)
        print(
            f"{args.events:,} events over {args.days:g} simulated days "
            f"({args.events / args.days:,.0f} a day), batches of {args.batch}, "
            f"pruned every {args.prune_every:g} simulated s; size on disk (database + WAL):"
        )
        print(header)
        written = 0
        report_every = max(args.events // 10, 1)
        stopped_early = False
        while written < args.events:
            if time.monotonic() - began > args.max_seconds:
                stopped_early = True
                break
            n = min(args.batch, args.events - written)
            rows, _ = Outbox.rows(batch_of(rng, written, n, start_ms, step_ms))
            for _, outbox in columns:
                outbox.insert(rows)
            written += n
            now_ms = start_ms + int(written * step_ms)
            if now_ms >= next_prune:
                t = time.monotonic()
                for _, outbox in columns[1:]:
                    outbox.prune(now_ms=now_ms)
                prune_seconds += time.monotonic() - t
                next_prune = now_ms + prune_ms
            if written % report_every == 0 or written == args.events:
                sizes = "  ".join(f"{mb(o.file_size()):>16}" for _, o in columns)
                print(f"{written:>10,}  {sizes}", flush=True)
        elapsed = time.monotonic() - began
        if stopped_early:
            print(f"stopped after --max-seconds {args.max_seconds:g}: {written:,} events written")
        reference = columns[0][1].stats(recent=0)["totals"]
        results = []
        for name, outbox in columns:
            stats = outbox.stats(recent=0)
            counts = stats["outbox"]
            kept = counts["pending"] + counts["sent"] + counts["parked"]
            hours = outbox._rdb.execute("SELECT COUNT(*) FROM folded").fetchone()[0]
            agree = stats["totals"] == reference
            outbox.close()
            size = outbox.path.stat().st_size
            results.append((name, size, kept, counts["folded"], hours, agree))
        print(f"\nafter closing ({elapsed:.1f} s in all, {prune_seconds:.1f} s of it pruning):")
        print(
            f"{'':>16}  {'file':>10}  {'B/request':>11}  {'events kept':>11}  "
            f"{'folded':>9}  {'hourly rows':>11}  stats totals"
        )
        for name, size, kept, folded, hours, agree in results:
            print(
                f"{name:>16}  {mb(size):>10}  {size / max(written, 1):>11.0f}  {kept:>11,}  "
                f"{folded:>9,}  {hours:>11,}  {'same' if agree else 'DIFFERENT'}"
            )
        return 0 if all(r[-1] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
