#!/usr/bin/env python3
"""Check a price file (default: the built-in one) for malformed rows, and show its coverage.

    .venv/bin/python scripts/check_prices.py [FILE] [--against LITELLM]

Exit status 1 when a row is malformed: a price (any ``*cost*`` field) that is not a
non-negative number, a missing input or output price, a max_output_tokens that is not a
positive integer (0 passes for a model whose output is free: LiteLLM's moderation rows), a
provider other than openai/text-completion-openai/anthropic, a cache price above the model's
own input price times 2 (a typo in the exponent, most likely), or an ``alias_of`` row that
does not lead to a priced row.

``--against LITELLM`` (LiteLLM's price file or wheel, as for ``update_prices.py``) also
checks that every row ``update_prices.py`` would take from it is in FILE, and lists the rows
whose main rates differ (FILE is older or newer than it); a missing row is a problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

from iron_runtime.pricing import ModelPrice

PROVIDERS = (None, "openai", "text-completion-openai", "anthropic")
MAIN_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)
CACHE_FIELDS = MAIN_FIELDS[2:]


def _bad_price(value: object) -> bool:
    if isinstance(value, dict):  # search_context_cost_per_query: a price per context size
        return any(_bad_price(v) for v in value.values())
    return isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0


def problems(model: str, row: dict, rows: dict | None = None) -> list[str]:
    """What is wrong with one row; ``rows`` (the whole file) resolves ``alias_of``."""
    if "alias_of" in row:
        return alias_problems(model, row, rows or {})
    out = []
    for name, value in row.items():
        if "cost" in name and value is not None and _bad_price(value):
            out.append(f"{name} = {value!r} is not a non-negative number")
    for name in MAIN_FIELDS[:2]:
        if row.get(name) is None:
            out.append(f"{name} is missing")
    max_out = row.get("max_output_tokens")
    no_output = row.get("output_cost_per_token") == 0  # moderation: LiteLLM writes 0
    if max_out is not None and (
        isinstance(max_out, bool)
        or not isinstance(max_out, int)
        or max_out < 0
        or (max_out == 0 and not no_output)
    ):
        out.append(f"max_output_tokens = {max_out!r} is not a positive integer")
    if row.get("litellm_provider") not in PROVIDERS:
        out.append(f"litellm_provider {row.get('litellm_provider')!r} is not served here")
    base = row.get("input_cost_per_token")
    for name in CACHE_FIELDS:
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


def alias_problems(model: str, row: dict, rows: dict) -> list[str]:
    seen = {model}
    target = row["alias_of"]
    while True:
        if not isinstance(target, str) or target not in rows:
            return [f"alias_of {target!r} names no row of this file"]
        if target in seen:
            return [f"alias_of loops back to {target!r}"]
        seen.add(target)
        entry = rows[target]
        if not isinstance(entry, dict):
            return [f"alias_of {target!r} is not a row"]
        if "alias_of" not in entry:
            return [f"alias_of {target!r}, which has a problem"] if problems(target, entry) else []
        target = entry["alias_of"]


def against(data: dict, litellm: Path) -> int:
    """Rows LiteLLM's file would give that ``data`` lacks (printed; counted as problems),
    and rows whose main rates differ (printed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from update_prices import read_litellm, select

    rows, name = read_litellm(litellm)
    taken, _ = select(rows)
    missing = sorted(m for m in taken if m not in data)
    for model in missing:
        print(f"{model}: in {name}, not in this file")
    differ = 0
    for model, row in sorted(taken.items()):
        ours = data.get(model)
        if not isinstance(ours, dict):
            continue
        diffs = [
            f"{f} {ours.get(f)!r} here, {row.get(f)!r} there"
            for f in (*MAIN_FIELDS, "max_output_tokens", "alias_of")
            if ours.get(f) != row.get(f)
        ]
        if diffs:
            differ += 1
            print(f"{model}: differs from {name}: {'; '.join(diffs)}")
    print(f"against {name}: {len(taken)} rows, {len(missing)} missing here, {differ} differ")
    return len(missing)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, help="a price file (default: built-in)")
    parser.add_argument("--against", type=Path, help="LiteLLM's price file or wheel")
    args = parser.parse_args(argv)
    if args.file:
        text = args.file.read_text("utf-8")
    else:
        text = resources.files("iron_runtime").joinpath("prices.json").read_text("utf-8")
    data = json.loads(text)
    bad = 0
    providers: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    for model, row in sorted(data.items()):
        if model.startswith("_") or model == "sample_spec":
            continue
        if not isinstance(row, dict):
            print(f"{model}: row is not an object")
            bad += 1
            continue
        if "alias_of" in row:
            providers["alias"] += 1
        else:
            providers[row.get("litellm_provider") or "?"] += 1
            modes[row.get("mode") or "?"] += 1
        for problem in problems(model, row, data):
            print(f"{model}: {problem}")
            bad += 1
    if args.against:
        bad += against(data, args.against)
    source = data.get("_source", {})
    counts = ", ".join(f"{p} {n}" for p, n in sorted(providers.items()))
    by_mode = ", ".join(f"{m} {n}" for m, n in sorted(modes.items()))
    print(
        f"{sum(providers.values())} models ({counts}; {by_mode}); source: "
        f"{source.get('from', 'user file')}; as of {source.get('as_of', '?')}"
    )
    print("OK" if not bad else f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
