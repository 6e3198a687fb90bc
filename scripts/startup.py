#!/usr/bin/env python3
"""Start-up time of ``LlmRouter``: from the constructor call until the router answers.

    .venv/bin/python scripts/startup.py [--runs 10]

Prints the first start in a fresh state directory (mitmproxy generates its CA there) and the
median and worst of the following warm starts, each followed by a health request.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import urllib.request

from iron_runtime import LlmRouter


def one_start(state_dir: str) -> float:
    t0 = time.perf_counter()
    router = LlmRouter(provider_key="sk-startup-measure", state_dir=state_dir)
    try:
        url = router.base_url.removesuffix("/v1") + "/"
        assert urllib.request.urlopen(url, timeout=10).read() == b"LlmRouter OK"
        return time.perf_counter() - t0
    finally:
        router.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as state:
        first = one_start(state)
        warm = [one_start(state) for _ in range(args.runs)]
    print(f"first start (new state dir, CA generated): {first * 1000:.0f} ms")
    print(
        f"warm starts ({args.runs}): median {statistics.median(warm) * 1000:.0f} ms, "
        f"max {max(warm) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
