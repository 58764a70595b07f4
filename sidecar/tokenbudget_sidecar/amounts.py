"""A call's amounts in a limit's own unit (tokens, dollars or requests), held and settled.

A limit counts in one unit, a call carries all three: these are the one place that picks the figure a
limit counts, so that admission's holds, settlement, replay and the checkpoint can never disagree on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from tokenbudget_api.tokenbudget import Limit
from tokenbudget_api.usage import UsageRecord


@dataclass(frozen=True)
class Demand:
    """What one call may consume at most, per unit of limit."""

    tokens: int
    cost_usd: Decimal | None  # None: the model has no price

    def of(self, limit: Limit) -> Decimal | None:
        if limit.tokens is not None:
            return Decimal(self.tokens)
        if limit.cost_usd is not None:
            return self.cost_usd
        return Decimal(1)


@dataclass(frozen=True)
class Spend:
    """What settled calls spent, as windows count it: one usage record, or a sum of records of one user and
    model within one second (checkpoint.py; no period or rolling bucket edge falls inside a second)."""

    user: str | None
    model: str
    at: dt.datetime
    tokens: int
    cost_usd: Decimal  # an unpriced model counts 0 in dollar limits, as settlement counts it
    requests: int = 1

    @classmethod
    def of_record(cls, record: UsageRecord) -> Spend:
        return cls(record.user, record.model, record.time, record.usage.total_tokens,
                   record.cost_usd if record.cost_usd is not None else Decimal(0))

    def of(self, limit: Limit) -> Decimal:
        """The amount in `limit`'s unit."""
        return spent_in(limit, self.tokens, self.cost_usd, self.requests)


def spent_in(limit: Limit, tokens: int, cost_usd: Decimal | None, requests: int = 1) -> Decimal:
    """Settled use in `limit`'s unit: settlement, replay and the checkpoint all count by this.

    An unpriced model never gets to settle under a dollar limit (refused at admission), so a missing cost
    means nothing billed.
    """
    if limit.tokens is not None:
        return Decimal(tokens)
    if limit.cost_usd is not None:
        return cost_usd if cost_usd is not None else Decimal(0)
    return Decimal(requests)


def unit_of(limit: Limit) -> str:
    """The unit's name as reports and refusal messages print it."""
    return "tokens" if limit.tokens is not None else ("USD" if limit.cost_usd is not None else "requests")


__all__ = ["Demand", "Spend", "spent_in", "unit_of"]
