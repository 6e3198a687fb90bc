#!/usr/bin/env python3
"""Where the router's CPU goes: py-spy samples the router process while wrk loads it.

    .venv/bin/python scripts/profile_router.py [--seconds 15] [--connections 10] [--budget]
        [--top 40]

Starts the OpenAI emulator and an ``LlmRouter`` (with ``--budget``, one with a budget), runs
``wrk`` against the router for ``--seconds`` while ``py-spy record`` samples the router's
process, then prints the functions with the most samples, by own time and by total time
(a function and what it calls), as shares of all samples. Needs ``py-spy``
(``pip install py-spy``) and ``wrk``; py-spy may need ``kernel.yama.ptrace_scope=0`` or root
to attach.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import OPENAI_KEY, Target, chat_body, start_emulator, wrk  # noqa: E402

from iron_runtime import LlmRouter  # noqa: E402

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--budget", action="store_true", help="profile a router with a budget")
    ap.add_argument("--top", type=int, default=40)
    args = ap.parse_args()

    emu, url = start_emulator("openai", OPENAI_KEY)
    router = None
    try:
        router = LlmRouter(
            provider_keys={"openai": OPENAI_KEY},
            upstreams={"openai": url},
            budget=1_000_000 if args.budget else None,
        )
        base = router.base_url.removesuffix("/v1")
        target = Target(
            "router",
            base,
            "/v1/chat/completions",
            {"Authorization": f"Bearer {router.api_key}"},
            chat_body("gpt-4o-mini"),
        )
        with tempfile.TemporaryDirectory() as tmp:
            wrk(target, args.connections, 2, Path(tmp))  # warm up
            raw = Path(tmp) / "profile.txt"
            spy = subprocess.Popen(
                [PY_SPY, "record", "-p", str(router.pid), "-r", "250", "-f", "raw"]
                + ["-o", str(raw), "-d", str(int(args.seconds) + 1), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)
            result = wrk(target, args.connections, args.seconds, Path(tmp))
            _, err = spy.communicate(timeout=args.seconds + 60)
            if not raw.exists():
                raise SystemExit(f"py-spy wrote no profile: {err.strip()}")
            report(raw.read_text(), args.top, result)
    finally:
        if router is not None:
            router.stop()
        emu.kill()


def report(raw: str, top: int, load: dict) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f.split(" (", 1)[0] + " " + _where(f) for f in stack.split(";")]
        samples += n
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    print(f"load: {load['rps']:.0f} req/s, p50 {load['p50']:.2f} ms; {samples} samples\n")
    by_package: collections.Counter[str] = collections.Counter()
    for name, n in own.items():
        where = name.rpartition(" ")[2]
        by_package[where.split("/", 1)[0] if "/" in where else "other"] += n
    print("-- own time by package")
    for name, n in by_package.most_common():
        print(f"{100 * n / max(samples, 1):6.1f}%  {name}")
    print()
    ours = collections.Counter({k: v for k, v in total.items() if "iron_runtime/" in k})
    for title, counter in (
        ("own time", own),
        ("total time (with callees)", total),
        ("total time of iron_runtime functions", ours),
    ):
        print(f"-- {title}")
        for name, n in counter.most_common(top):
            print(f"{100 * n / max(samples, 1):6.1f}%  {name}")
        print()


def _where(frame: str) -> str:
    inside = frame.partition(" (")[2].rstrip(")")
    path, _, line = inside.rpartition(":")
    parts = Path(path).parts
    for anchor in ("iron_runtime", "mitmproxy", "asyncio", "h11", "pydantic", "sqlite3"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) :])
    return Path(path).name or inside


if __name__ == "__main__":
    main()
