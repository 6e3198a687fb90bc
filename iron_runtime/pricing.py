"""Model prices and limits: a table shipped in the package, with a user file merged over it.

The file format is LiteLLM's ``model_prices_and_context_window.json`` (``input_cost_per_token``,
``output_cost_per_token``, ``cache_read_input_token_cost``, ``cache_creation_input_token_cost``,
``max_output_tokens``, ``litellm_provider``, and ``alias_of`` rows that name another row), so
that file can be dropped in as it is. Rates are kept as integer micro-dollars per million
tokens (USD per token × 10¹²), so that costs are computed in integers.

A model is looked up by its exact name, then without a date suffix or ``-latest``, then
without an ``openai/`` or ``anthropic/`` prefix; a fine-tuned model
(``ft:gpt-4o-mini-2024-07-18:org::abc123``) is priced as its ``ft:`` base row
(``ft:gpt-4o-mini-2024-07-18``), never as the cheaper base model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

_DATE_SUFFIX = re.compile(r"(-\d{8}|-\d{4}-\d{2}-\d{2}|-latest)$")
_PROVIDER_PREFIX = re.compile(r"^(openai|anthropic)/")
_MAX_ALIAS_HOPS = 8


def _rate(value: Any) -> int | None:
    """USD per token → micro-dollars per million tokens (exact for decimal inputs)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"price must be a number, got {value!r}")
    rate = Decimal(str(value)) * 10**12
    if rate < 0:
        raise ValueError(f"price must not be negative, got {value!r}")
    return int(rate.to_integral_value())


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    provider: str | None
    input: int | None  # µ$ per million tokens
    output: int | None
    cache_read: int | None
    cache_write: int | None
    max_output_tokens: int | None

    @classmethod
    def from_entry(cls, model: str, entry: dict[str, Any]) -> ModelPrice:
        # 0 is LiteLLM's "no output" (moderation, some embeddings): no maximum to use;
        # a few of its rows write whole numbers as floats (2000000.0)
        max_out = entry.get("max_output_tokens") or entry.get("max_tokens") or None
        if isinstance(max_out, float) and max_out.is_integer():
            max_out = int(max_out)
        if max_out is not None and (
            isinstance(max_out, bool) or not isinstance(max_out, int) or max_out < 0
        ):
            raise ValueError(f"{model}: max_output_tokens must be a positive integer")
        return cls(
            model=model,
            provider=entry.get("litellm_provider"),
            input=_rate(entry.get("input_cost_per_token")),
            output=_rate(entry.get("output_cost_per_token")),
            cache_read=_rate(entry.get("cache_read_input_token_cost")),
            cache_write=_rate(entry.get("cache_creation_input_token_cost")),
            max_output_tokens=max_out,
        )

    @property
    def priced(self) -> bool:
        return self.input is not None and self.output is not None


class PriceTable:
    def __init__(
        self, prices: dict[str, ModelPrice], aliases: dict[str, str] | None = None
    ) -> None:
        self._prices = prices
        self._aliases = aliases or {}  # name → the row it stands for (LiteLLM's ``alias_of``)
        self._cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: PriceTable | None = None) -> PriceTable:
        prices = dict(base._prices) if base else {}
        aliases = dict(base._aliases) if base else {}
        for model, entry in data.items():
            if model.startswith("_") or model == "sample_spec" or not isinstance(entry, dict):
                continue
            target = entry.get("alias_of")
            if target is not None:
                if not isinstance(target, str) or not target:
                    raise ValueError(f"{model}: alias_of must name another model")
                aliases[model] = target
                prices.pop(model, None)
            else:
                prices[model] = ModelPrice.from_entry(model, entry)
                aliases.pop(model, None)
        return cls(prices, aliases)

    @classmethod
    def builtin(cls) -> PriceTable:
        text = resources.files("iron_runtime").joinpath("prices.json").read_text("utf-8")
        return cls.from_json(json.loads(text))

    @classmethod
    def load(cls, user_file: str | Path | None = None) -> PriceTable:
        """The built-in table, with ``user_file`` (if any) merged over it."""
        table = cls.builtin()
        if user_file:
            try:
                data = json.loads(Path(user_file).read_text("utf-8"))
            except (OSError, ValueError) as e:
                raise ValueError(f"price file {user_file}: {e}") from None
            if not isinstance(data, dict):
                raise ValueError(f"price file {user_file}: expected a JSON object of models")
            table = cls.from_json(data, base=table)
        return table

    def __len__(self) -> int:
        return len(self._prices) + len(self._aliases)

    def models(self) -> list[str]:
        """Every name the table prices: its rows and its aliases."""
        return sorted({*self._prices, *self._aliases})

    def lookup(self, model: str) -> ModelPrice | None:
        """By exact name, then without a date suffix or ``-latest``, then without an
        ``openai/`` or ``anthropic/`` prefix (and again without the suffix); a fine-tuned
        model ``ft:BASE:org:name:id`` as the row ``ft:BASE`` (or ``BASE`` without its date
        suffix). An alias row gives the price of the row it names."""
        if model in self._cache:
            return self._cache[model]
        found = None
        for name in _candidates(model):
            found = self._resolve(name)
            if found is not None:
                break
        if len(self._cache) < 10_000:
            self._cache[model] = found
        return found

    def _resolve(self, name: str) -> ModelPrice | None:
        for _ in range(_MAX_ALIAS_HOPS):
            found = self._prices.get(name)
            if found is not None:
                return found
            target = self._aliases.get(name)
            if target is None:
                return None
            name = target
        return None  # an alias loop, or a chain too long to be a mistake-free table

    def max_output_tokens(self, model: str) -> int | None:
        price = self.lookup(model)
        return price.max_output_tokens if price else None


def _candidates(model: str) -> list[str]:
    """The names ``model`` may be priced under, in order."""
    bare = _PROVIDER_PREFIX.sub("", model)
    names = [model, _DATE_SUFFIX.sub("", model), bare, _DATE_SUFFIX.sub("", bare)]
    if bare.startswith("ft:"):
        # ft:gpt-4o-mini-2024-07-18:org:suffix:id (and :ckpt-step-N): the base is the part
        # up to the first colon; its price is the fine-tune row, dearer than the base model
        base = "ft:" + bare[3:].partition(":")[0]
        names += [base, _DATE_SUFFIX.sub("", base)]
    return list(dict.fromkeys(names))
