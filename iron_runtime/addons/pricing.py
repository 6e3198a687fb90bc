"""Pricing addon: owns the price table (built-in, with ``iron_pricing`` merged over it) that
the gateway (maximum output tokens) and the budget read."""

from __future__ import annotations

from mitmproxy import ctx, exceptions

from iron_runtime.pricing import PriceTable


class Pricing:
    def __init__(self) -> None:
        self.table = PriceTable.builtin()

    def load(self, loader) -> None:
        loader.add_option(
            "iron_pricing",
            str,
            "",
            "Price file (LiteLLM's model_prices_and_context_window.json format) merged over "
            "the built-in prices.",
        )

    def configure(self, updated: set[str]) -> None:
        if "iron_pricing" in updated:
            try:
                self.table = PriceTable.load(ctx.options.iron_pricing or None)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None


def price_table() -> PriceTable:
    """The running proxy's price table."""
    addon = ctx.master.addons.get("pricing")
    return addon.table if addon is not None else PriceTable.builtin()
