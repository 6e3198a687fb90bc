#!/usr/bin/env python3
"""Merge the OpenAI and Anthropic rows of LiteLLM's price file into the built-in price table.

    .venv/bin/python scripts/update_prices.py LITELLM [--add-only] [--table FILE] [--dry-run]

LITELLM is LiteLLM's ``model_prices_and_context_window.json`` or a LiteLLM wheel, which holds
it as ``litellm/model_prices_and_context_window_backup.json`` and names its release; no
network, and litellm is not a dependency:

    pip download litellm --no-deps -d /tmp/litellm
    .venv/bin/python scripts/update_prices.py /tmp/litellm/litellm-*.whl

Which rows are taken: those whose ``litellm_provider`` is ``openai``,
``text-completion-openai`` or ``anthropic`` (the APIs this router forwards to; Azure, Bedrock,
Vertex and other resellers' copies are not), priced per token, in the modes the router can
meter (``chat``, ``responses``, ``completion``, ``embedding``, ``moderation``,
``realtime``), and LiteLLM's ``alias_of`` rows naming one of them. Image, video, speech and
transcription rows are left out, reported as skipped: they are priced per image, second or
character, or bill output the router cannot count, so the router refuses them under a
budget rather than charge them wrongly. Of each row, its price fields (every ``*cost*``
field but the batch API's and the flex tier's discounts), token limits, provider, mode and
deprecation date are kept.

A row of the file replaces the table's row of that name (``--add-only``: only rows the
table lacks are added, e.g. retired models from an older release); rows the file does not
have are kept, so a retired model stays priced. The table's ``_source`` records the release
and date of every merge; what was added, changed, kept and skipped is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import zipfile
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "iron_runtime" / "prices.json"
WHEEL_MEMBER = "litellm/model_prices_and_context_window_backup.json"

PROVIDERS = ("openai", "text-completion-openai", "anthropic")
MODES = ("chat", "responses", "completion", "embedding", "moderation", "realtime")
SKIPPED_MODES = {
    "image_generation": "image generation: priced per image or image token",
    "video_generation": "video generation: priced per second of video",
    "audio_speech": "text to speech: priced per character or audio token of binary output",
    "audio_transcription": "transcription: priced per second of audio, multipart upload",
}
# the batch API and the flex tier only ever cost less than the rates kept
DISCOUNTS = ("_batches", "_flex")
KEPT_FIELDS = (
    "max_input_tokens",
    "max_output_tokens",
    "max_tokens",
    "litellm_provider",
    "mode",
    "deprecation_date",
)
FIRST_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)
DESCRIPTION = (
    "Per-token USD prices and limits of OpenAI and Anthropic models (chat, responses, "
    "legacy completions, fine-tunes, embeddings, moderation, audio and realtime), in the "
    "shape of LiteLLM's model_prices_and_context_window.json."
)
SELECTION = (
    "LiteLLM rows whose litellm_provider is openai, text-completion-openai or anthropic, "
    "priced per token, in modes chat, responses, completion, embedding, moderation and "
    "realtime, and alias_of rows naming one of them; image, video, speech and transcription "
    "rows are skipped (see each merge's skipped). A row LiteLLM no longer lists stays, so "
    "retired models remain priced. Made by scripts/update_prices.py."
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def skip_reason(row: dict) -> str | None:
    """Why a row of a served provider is not taken, or None when it is."""
    mode = row.get("mode")
    if mode in SKIPPED_MODES:
        return SKIPPED_MODES[mode]
    if not (
        _is_number(row.get("input_cost_per_token")) and _is_number(row.get("output_cost_per_token"))
    ):
        return "no per-token price"
    if mode is not None and mode not in MODES:
        return f"mode {mode}: not metered by the router"
    return None


def trim(row: dict) -> dict:
    """The fields of a row the table keeps, the four main rates first."""
    out = {name: row[name] for name in FIRST_FIELDS if name in row}
    for name in sorted(row):
        if name in out or name.endswith(DISCOUNTS):
            continue
        if "cost" in name:
            out[name] = row[name]
    for name in KEPT_FIELDS:
        if name in row:
            out[name] = row[name]
    return out


def select(data: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """The rows of a LiteLLM file the table takes (trimmed), and the rows of the served
    providers it skips, with the reason."""
    taken: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for model, row in data.items():
        if model == "sample_spec" or not isinstance(row, dict) or "alias_of" in row:
            continue
        if row.get("litellm_provider") not in PROVIDERS:
            continue
        reason = skip_reason(row)
        if reason is None:
            taken[model] = trim(row)
        else:
            skipped[model] = reason
    for model, row in data.items():
        if isinstance(row, dict) and row.get("alias_of") in taken and model not in taken:
            taken[model] = {"alias_of": row["alias_of"]}
    return taken, skipped


def merge(
    table: dict, taken: dict[str, dict], add_only: bool = False
) -> tuple[dict, list[str], dict[str, list[str]]]:
    """The new table, the models added, and for each changed model what changed."""
    out = dict(table)
    added: list[str] = []
    changed: dict[str, list[str]] = {}
    for model, row in sorted(taken.items()):
        old = table.get(model)
        if old is None:
            out[model] = row
            added.append(model)
        elif not add_only and old != row:
            out[model] = row
            diffs = [
                f"{name} {old.get(name)!r} -> {row.get(name)!r}"
                for name in sorted({*old, *row})
                if old.get(name) != row.get(name)
            ]
            changed[model] = diffs
    return out, added, changed


def read_litellm(path: Path) -> tuple[dict, str]:
    """The price file's rows, and what to call it in ``_source``."""
    if path.suffix == ".whl":
        match = re.match(r"litellm-([^-]+)-", path.name)
        release = f"LiteLLM {match.group(1)}" if match else path.name
        with zipfile.ZipFile(path) as wheel:
            text = wheel.read(WHEEL_MEMBER).decode("utf-8")
        return json.loads(text), f"{release} ({Path(WHEEL_MEMBER).name})"
    return json.loads(path.read_text("utf-8")), path.name


def dump(table: dict) -> str:
    ordered = {"_source": table["_source"]} if "_source" in table else {}
    for model in sorted(m for m in table if m != "_source"):
        ordered[model] = table[model]
    return json.dumps(ordered, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("litellm", type=Path, help="LiteLLM's price file, or a LiteLLM wheel")
    parser.add_argument("--table", type=Path, default=TABLE, help="the table to update")
    parser.add_argument(
        "--add-only", action="store_true", help="add missing rows, change none (older releases)"
    )
    parser.add_argument("--from", dest="source", help="how to name the file in _source")
    parser.add_argument("--published", help="the release date of the file, YYYY-MM-DD")
    parser.add_argument("--dry-run", action="store_true", help="print, write nothing")
    args = parser.parse_args(argv)

    data, name = read_litellm(args.litellm)
    name = args.source or name
    table = json.loads(args.table.read_text("utf-8")) if args.table.exists() else {}
    taken, skipped = select(data)
    new, added, changed = merge(table, taken, args.add_only)
    kept = sorted(m for m in table if m != "_source" and m not in taken)

    today = datetime.date.today().isoformat()
    source = dict(table.get("_source") or {})
    history = list(source.pop("history", []))
    if not history and source.get("from"):
        history.append({k: source[k] for k in ("from", "as_of") if k in source})
    record: dict = {"from": name, "as_of": today}
    if args.published:
        record["published"] = args.published
    if args.add_only:
        record["add_only"] = True
    record["taken"] = len(taken)
    record["added"] = added
    record["changed"] = sorted(changed)
    by_reason: dict[str, list[str]] = {}
    for model, reason in sorted(skipped.items()):
        by_reason.setdefault(reason, []).append(model)
    record["skipped"] = by_reason
    history.append(record)
    new["_source"] = {
        "description": DESCRIPTION,
        "from": name if not args.add_only else source.get("from", name),
        "as_of": today if not args.add_only else source.get("as_of", today),
        "selection": SELECTION,
        "history": history,
    }

    print(f"{name}: {len(taken)} rows taken, {len(skipped)} skipped")
    print(f"added {len(added)}: {', '.join(added) or '-'}")
    print(f"changed {len(changed)}:")
    for model, diffs in sorted(changed.items()):
        print(f"  {model}: {'; '.join(diffs)}")
    print(f"kept, not in this file {len(kept)}: {', '.join(kept) or '-'}")
    for reason, models in by_reason.items():
        print(f"skipped ({reason}) {len(models)}: {', '.join(models)}")
    priced = sum(1 for m in new if m != "_source")
    print(f"table: {priced} models (was {sum(1 for m in table if m != '_source')})")
    if not args.dry_run:
        args.table.write_text(dump(new), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
