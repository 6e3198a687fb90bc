"""Model prices and limits: a table shipped in the package, with a user file merged over it.

The file format is LiteLLM's ``model_prices_and_context_window.json`` (``input_cost_per_token``,
``output_cost_per_token``, ``cache_read_input_token_cost``, ``cache_creation_input_token_cost``,
``max_output_tokens``, ``litellm_provider``), so that file can be dropped in as it is.
Rates are kept as integer micro-dollars per million tokens (USD per token × 10¹²), so that
costs are computed in integers.
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
        max_out = entry.get("max_output_tokens") or entry.get("max_tokens")
        if max_out is not None and (not isinstance(max_out, int) or max_out <= 0):
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
    def __init__(self, prices: dict[str, ModelPrice]) -> None:
        self._prices = prices
        self._cache: dict[str, ModelPrice | None] = {}

    @classmethod
    def from_json(cls, data: dict[str, Any], base: PriceTable | None = None) -> PriceTable:
        prices = dict(base._prices) if base else {}
        for model, entry in data.items():
            if model.startswith("_") or model == "sample_spec" or not isinstance(entry, dict):
                continue
            prices[model] = ModelPrice.from_entry(model, entry)
        return cls(prices)

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
        return len(self._prices)

    def models(self) -> list[str]:
        return sorted(self._prices)

    def lookup(self, model: str) -> ModelPrice | None:
        """By exact name, then without a date suffix or ``-latest``, then without a
        ``openai/`` or ``anthropic/`` prefix (and again without the suffix)."""
        if model in self._cache:
            return self._cache[model]
        found = None
        bare = _PROVIDER_PREFIX.sub("", model)
        for name in (model, _DATE_SUFFIX.sub("", model), bare, _DATE_SUFFIX.sub("", bare)):
            found = self._prices.get(name)
            if found is not None:
                break
        if len(self._cache) < 10_000:
            self._cache[model] = found
        return found

    def max_output_tokens(self, model: str) -> int | None:
        price = self.lookup(model)
        return price.max_output_tokens if price else None
