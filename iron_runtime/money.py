"""Money: integer micro-dollars inside the router, USD at its edges."""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float) -> int:
    """Dollars to micro-dollars, rounded down (a limit never grows by rounding)."""
    if not isinstance(usd, (int, float)) or isinstance(usd, bool) or not math.isfinite(usd):
        raise ValueError(f"a budget must be a finite number of USD, got {usd!r}")
    value = Decimal(str(usd)) * MICROS_PER_USD
    if value < 0:
        raise ValueError(f"a budget must not be negative, got {usd}")
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD


def usd(micros: int | float) -> str:
    """A cost in USD to the micro-dollar it is counted in: ``$0.000096``, ``$0.09``,
    ``$1.234567``, ``$12,345.00``; never ``$0.0000`` for a cost that is not zero."""
    text = f"{micros / MICROS_PER_USD:,.6f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.ljust(2, '0')}"
