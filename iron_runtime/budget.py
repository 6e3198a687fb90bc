"""The budget ledger: integer micro-dollars, reserve before a request, settle after it.

The invariant: ``spent + reserved`` never passes the limit through a reservation, and every
reservation ends exactly once, settled at the actual cost or released. So, under any
concurrency, **spent never exceeds the limit** as long as no request costs more than it
reserved, which holds when the provider respects ``max_tokens`` and counts no more input
tokens than the reservation did.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

from .errors import RouterError

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


_ids = itertools.count(1)


@dataclass(slots=True)
class Reservation:
    amount: int  # micro-dollars
    id: int = 0
    done: bool = False


class BudgetExceeded(RouterError):
    """402: nothing is left (``spent + reserved >= limit``)."""

    def __init__(self, spent: int, reserved: int, limit: int) -> None:
        super().__init__(
            402,
            "iron_cage_budget_exceeded",
            "budget_exceeded",
            f"Iron Cage budget limit exceeded. Spent: {usd(spent)}, Reserved: {usd(reserved)}, "
            f"Limit: {usd(limit)}. Increase the budget with router.set_budget() or wait for "
            "in-flight requests to complete.",
        )


class InsufficientBudget(RouterError):
    """402: this request's worst case does not fit in what is left."""

    def __init__(self, available: int, estimate: int, detail: str) -> None:
        super().__init__(
            402,
            "iron_cage_insufficient_budget",
            "insufficient_budget",
            f"Iron Cage insufficient budget for request. Available: {usd(available)}, "
            f"Estimated max cost: {usd(estimate)} ({detail}). Reduce max_tokens, shorten the "
            "prompt, or increase the budget with router.set_budget().",
        )


class Ledger:
    """Thread-safe; every operation is a few integer updates under one lock."""

    def __init__(self, limit: int | None = None) -> None:
        self._lock = threading.Lock()
        self.limit = limit  # micro-dollars; None is unlimited
        self.spent = 0
        self.reserved = 0

    def reserve(self, amount: int, detail: str = "") -> Reservation:
        if amount < 0:
            raise ValueError("a reservation must not be negative")
        with self._lock:
            limit = self.limit
            if limit is not None:
                if self.spent + self.reserved >= limit:
                    raise BudgetExceeded(self.spent, self.reserved, limit)
                available = limit - self.spent - self.reserved
                if amount > available:
                    raise InsufficientBudget(available, amount, detail or "worst case")
            self.reserved += amount
            return Reservation(amount, next(_ids))

    def settle(self, reservation: Reservation, actual: int) -> None:
        """End a reservation by charging the actual cost (idempotent)."""
        with self._lock:
            if reservation.done:
                return
            reservation.done = True
            self.reserved -= reservation.amount
            self.spent += max(actual, 0)

    def release(self, reservation: Reservation) -> None:
        """End a reservation without charging anything (idempotent)."""
        self.settle(reservation, 0)

    def set_limit(self, limit: int | None) -> None:
        with self._lock:
            self.limit = limit

    def status(self) -> tuple[int, int, int | None]:
        with self._lock:
            return self.spent, self.reserved, self.limit
