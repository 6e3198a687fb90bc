"""The budget ledger: integer micro-dollars, reserve before a request, settle after it.

The invariant: ``spent + reserved`` never passes the limit through a reservation, and every
reservation ends exactly once, settled at the actual cost or released. So, under any
concurrency, **spent never exceeds the limit** as long as no request costs more than it
reserved, which holds when the provider respects ``max_tokens`` and counts no more input
tokens than the reservation did.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from .errors import BudgetExceeded, InsufficientBudget
from .money import MICROS_PER_USD, micros_to_usd, usd, usd_to_micros  # noqa: F401

_ids = itertools.count(1)


@dataclass(slots=True)
class Reservation:
    amount: int  # micro-dollars
    id: int = 0
    done: bool = False


class Ledger:
    """Thread-safe; every operation is a few integer updates under one lock."""

    def __init__(self, limit: int | None = None) -> None:
        self._lock = threading.Lock()
        self.limit = limit  # micro-dollars; None is unlimited
        self.spent = 0
        self.reserved = 0
        self.refused = 0  # reservations refused for the limit (answered 402)

    def reserve(self, amount: int, detail: str = "") -> Reservation:
        if amount < 0:
            raise ValueError("a reservation must not be negative")
        with self._lock:
            limit = self.limit
            if limit is not None:
                if self.spent + self.reserved >= limit:
                    self.refused += 1
                    raise BudgetExceeded(self.spent, self.reserved, limit)
                available = limit - self.spent - self.reserved
                if amount > available:
                    self.refused += 1
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

    def add_to_limit(self, amount: int) -> None:
        """Raise the limit by ``amount`` (a lease refresh), atomically."""
        with self._lock:
            self.limit = (self.limit or 0) + amount

    def status(self) -> tuple[int, int, int | None]:
        with self._lock:
            return self.spent, self.reserved, self.limit

    def report(self) -> dict[str, int | None]:
        """The figures the admin endpoint shows."""
        with self._lock:
            return {
                "spent_micros": self.spent,
                "reserved_micros": self.reserved,
                "limit_micros": self.limit,
                "refused": self.refused,
            }
