"""What an admitted call holds in each of its windows until it settles, and how a lazy hold becomes exact.

A call is held at its worst case (prompt + output cap at list price) so that calls in flight can never
together pass a window's room. The prompt part may rest on the prompt's byte bound rather than its exact
token count (prompt_count.py): such a lazy hold tells each window how far it may exceed the exact one, and
is made exact, never larger, as soon as a decision in one of its windows could turn on the difference.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from tokenbudget_api.tokenbudget import Action
from tokenbudget_sidecar.amounts import Demand
from tokenbudget_sidecar.prompt_count import PromptCount
from tokenbudget_sidecar.windows import Window

_ids = itertools.count(1)


@dataclass
class Reservation:
    id: int
    budget: str
    holds: list[tuple[Window, Decimal]]
    expires_at: dt.datetime
    decisions: list[Action] = field(default_factory=list)  # what enforcement did (or would have, in DryRun)
    # A hold on the prompt's byte bound: how to make it exact when a decision needs that (make_exact()).
    prompt: PromptCount | None = None
    demand_of: Callable[[int], Demand] | None = None

    @classmethod
    def take(cls, budget: str, holds: list[tuple[Window, Decimal]], expires_at: dt.datetime,
             decisions: list[Action]) -> Reservation:
        """Hold each amount in its window."""
        reservation = cls(next(_ids), budget, holds, expires_at, decisions)
        for window, amount in holds:
            window.reserved += amount
        return reservation

    def hold_lazily(self, prompt: PromptCount, demand_of: Callable[[int], Demand]) -> None:
        """Mark the holds as resting on `prompt`'s upper bound: each window learns by how much they may
        exceed the exact ones (the bound's demand minus the lower bound's)."""
        low = demand_of(prompt.low)
        self.prompt, self.demand_of = prompt, demand_of
        for window, amount in self.holds:
            floor = low.of(window.limit)
            window.lazy[self.id] = amount - (floor if floor is not None else amount)

    def make_exact(self) -> None:
        """Count the prompt exactly and shrink every hold to it (a hold never grows: the bound is above)."""
        prompt, demand_of = self.prompt, self.demand_of
        if prompt is None or demand_of is None:
            return
        demand = demand_of(prompt.count_now())
        holds = []
        for w, amount in self.holds:
            exact = demand.of(w.limit)
            new = amount if exact is None else min(exact, amount)
            w.reserved -= amount - new
            w.lazy.pop(self.id, None)
            holds.append((w, new))
        self.holds, self.prompt, self.demand_of = holds, None, None

    def give_back(self) -> None:
        """Take the holds out of their windows: the call settled, was never forwarded, or outlived its ttl."""
        for window, amount in self.holds:
            window.reserved -= amount
            window.lazy.pop(self.id, None)


__all__ = ["Reservation"]
