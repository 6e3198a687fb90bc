#!/usr/bin/env python3
"""Check a price file (default: the built-in one) for malformed rows, and show its coverage.

    .venv/bin/python scripts/check_prices.py [FILE]

Exit status 1 when a row is malformed: a price that is not a number or is negative, a
missing input or output price, a max_output_tokens that is not a positive integer, a
provider other than openai/anthropic, or a cache price above the model's own input price
times 2 (a typo in the exponent, most likely).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

from iron_runtime.pricing import ModelPrice

PRICE_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)


def problems(model: str, row: dict) -> list[str]:
    out = []
    for name in PRICE_FIELDS:
        value = row.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
        ):
            out.append(f"{name} = {value!r} is not a non-negative number")
    for name in PRICE_FIELDS[:2]:
        if row.get(name) is None:
            out.append(f"{name} is missing")
    max_out = row.get("max_output_tokens")
    if max_out is not None and (not isinstance(max_out, int) or max_out <= 0):
        out.append(f"max_output_tokens = {max_out!r} is not a positive integer")
    if row.get("litellm_provider") not in (None, "openai", "anthropic"):
        out.append(f"litellm_provider {row.get('litellm_provider')!r} is not served here")
    base = row.get("input_cost_per_token")
    for name in PRICE_FIELDS[2:]:
        value = row.get(name)
        if (
            isinstance(value, (int, float))
            and isinstance(base, (int, float))
            and base
            and value > 2 * base
        ):
            out.append(f"{name} = {value} is more than twice the input price {base}")
    if not out:
        try:
            ModelPrice.from_entry(model, row)
        except ValueError as e:
            out.append(str(e))
    return out


def main() -> int:
    if len(sys.argv) > 1:
        text = Path(sys.argv[1]).read_text("utf-8")
    else:
        text = resources.files("iron_runtime").joinpath("prices.json").read_text("utf-8")
    data = json.loads(text)
    bad = 0
    providers: Counter[str] = Counter()
    for model, row in sorted(data.items()):
        if model.startswith("_") or model == "sample_spec":
            continue
        if not isinstance(row, dict):
            print(f"{model}: row is not an object")
            bad += 1
            continue
        providers[row.get("litellm_provider") or "?"] += 1
        for problem in problems(model, row):
            print(f"{model}: {problem}")
            bad += 1
    source = data.get("_source", {})
    counts = ", ".join(f"{p} {n}" for p, n in providers.items())
    print(
        f"{sum(providers.values())} models ({counts}); source: "
        f"{source.get('from', 'user file')}; as of {source.get('as_of', '?')}"
    )
    print("OK" if not bad else f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
