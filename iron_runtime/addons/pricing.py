"""Pricing addon: the price table (built-in, with ``iron_pricing`` merged over it) in the
services the translate and reserve stages read."""

from __future__ import annotations

from mitmproxy import ctx, exceptions

from iron_runtime import settings
from iron_runtime.pipeline import Services
from iron_runtime.pricing import PriceTable
from iron_runtime.settings import Loader


class Pricing:
    def __init__(self, services: Services | None = None) -> None:
        self.s = services or Services()

    def load(self, loader: Loader) -> None:
        settings.declare(loader, "pricing")

    def configure(self, updated: set[str]) -> None:
        if "iron_pricing" in updated:
            try:
                self.s.prices = PriceTable.load(ctx.options.iron_pricing or None)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from None
