"""What acknowledged usage records counted in each window, kept next to the ledger so a restart forgets nothing.

Why: the ledger deletes records once the operator acknowledges them, and a restarted sidecar runs its
startup policy (the embedded default: no budget) until the operator pushes its own. Without this file the
operator's budgets came back with only the unacknowledged records, or nothing at all, so a pod could spend
its lease, or a whole limit, a second time in the same period.

What is stored (`checkpoint.json` in the ledger directory), for the records with seq ≤ `cursor` and no other:

- `windows`: per budget, limit (its name and shape: period or duration, per, unit, time zone) and key, the
  amount counted in each slot (a calendar period or a rolling bucket, by its start, with the instant it
  stops counting). Slots that stopped counting are dropped; a per-key limit keeps its
  `MAX_KEYS_PER_LIMIT` most recently used keys, as the windows do.
- `loose`: records of budgets the policy in force does not name (after a restart, the operator's budgets
  until its push; the operator acknowledges before it pushes), summed per user, model and second since
  their slots are not known yet. A policy naming the budget turns them into slots.
- `lostBefore`: set when the file was missing or unreadable while the ledger had acknowledged records: use
  before that instant may be missing, and `Window.history_clears_at` lets `failMode` decide.

One rule attributes every record (`BudgetState.contributions`, the one settlement follows), with the policy
in force when it is attributed: at an acknowledgement for the records acknowledged, at seeding for the
records still in the ledger. Seeding happens to every budget a policy brings that the previous one did not
have (`Admission.adopt` keeps the rest): at start for the startup policy, on a push for new names. Its
windows get the checkpoint's slots of limits of the same name and shape, then its loose sums, then the
ledger's records above `cursor` that name it.

Order on an acknowledgement (State.acknowledge): attribute on the event loop (the records are still in
memory), write this file off the loop (temp file, fsync, rename, fsync of the directory), and only then
let the ledger persist the cursor and delete segments. A crash in between leaves records with seq ≤
`cursor` in the ledger: the operator is offered them again (its cursor filters them) and seeding skips
them, so no record counts twice and none is lost. A failed write leaves the ledger's cursor where it was.

This module counts; the file's format (and its cost: each window is re-encoded only when it changed) is
checkpoint_format.py's, loading and writing the file checkpoint_file.py's.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
from collections.abc import Iterable, Iterator
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow

from tokenbudget_api.tokenbudget import Limit
from tokenbudget_api.usage import Outcome, UsageRecord
from tokenbudget_api.windows import period_bounds, rolling_granularity
from tokenbudget_sidecar.amounts import Spend
from tokenbudget_sidecar.budget import MAX_KEYS_PER_LIMIT, BudgetState
from tokenbudget_sidecar.checkpoint_format import (
    US,
    CheckpointError,
    Encoder,
    LimitShape,
    LooseSums,
    Pieces,
    WindowId,
    Windows,
    from_us,
    parse,
    to_us,
)

LOOSE_KEEP = dt.timedelta(days=32)  # loose sums of a budget no policy names for this long are dropped
_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])  # sums never round (as windows.py)


def shapes_of(b: BudgetState) -> dict[str, LimitShape]:
    """Each limit's name and shape (what its counts depend on, BudgetState.shape), by name."""
    return {lim.name: (lim.name, "|".join(part or "" for part in b.shape(lim))) for lim in b.spec.limits or []}


class Checkpoint:
    """Slots and loose sums of the records up to `cursor`; in memory, encoded for CheckpointFile."""

    def __init__(self, cursor: int = 0, lost_before: dt.datetime | None = None) -> None:
        self.cursor = cursor
        self.lost_before = lost_before
        self.slots: Windows = {}
        self.loose: dict[str, LooseSums] = {}
        self._expiries: list[tuple[int, int, WindowId, int]] = []  # heap: (end µs, tie, window, slot start)
        self._tie = itertools.count()
        self._periods: dict[tuple[str, str], tuple[int, int]] = {}  # last calendar period seen per (period, tz)
        self._encoder = Encoder()  # told of every change, so a write re-encodes only what changed
        self._bulk = False  # decoding: the expiry heap is built once at the end

    # ----- counting -------------------------------------------------------------------------------------

    def absorb(self, records: Iterable[UsageRecord], budgets: Iterable[BudgetState], cursor: int,
               now: dt.datetime) -> int:
        """Count the records with `self.cursor` < seq ≤ `cursor` (in seq order) and move the cursor there.

        `budgets`: the policy in force; a record's other budgets go to `loose`. Returns the records counted.
        """
        if cursor <= self.cursor:
            return 0
        known = {b.name: (b, shapes_of(b)) for b in budgets}
        now_us = to_us(now)
        counted = 0
        for rec in records:
            if rec.seq <= self.cursor:
                continue
            if rec.seq > cursor:
                break
            counted += 1
            if rec.outcome is Outcome.REFUSED or not rec.budgets:
                continue
            spend = Spend.of_record(rec)
            for name in rec.counted_budgets():
                if (plan := known.get(name)) is not None:
                    self._attribute(*plan, spend, now_us)
                else:
                    self._keep_loose(name, spend)
        self.cursor = cursor
        self.prune(now)
        return counted

    def seed(self, budgets: Iterable[BudgetState], records: Iterable[UsageRecord], now: dt.datetime) -> None:
        """Give `budgets` (new to this process's policy, no windows yet) everything they counted before.

        The checkpoint's slots of limits with the same name and shape, the loose sums naming them (which
        become slots), then `records` (the ledger's unacknowledged ones) above the cursor that name them, or
        that were made before any policy was pushed (`awaiting_policy`).
        """
        fresh = {b.name: b for b in budgets}
        if not fresh:
            return
        now_us = to_us(now)
        for b in fresh.values():
            shapes = shapes_of(b)
            for spend in self._take_loose(b.name):
                self._attribute(b, shapes, spend, now_us)
            limits = {shapes[lim.name]: lim for lim in b.spec.limits or []}
            for limit_shape, keys in self.slots.get(b.name, {}).items():
                limit = limits.get(limit_shape)
                if limit is None:
                    continue  # another limit now, or the same name with other edges: it starts afresh
                for key, slots in keys.items():
                    # Newest first: a rolling counter then never rescans its buckets for expired ones.
                    live = sorted(((start, amount) for start, (amount, end) in slots.items() if end > now_us),
                                  reverse=True)
                    if live:
                        b.seed(limit, key, ((from_us(start), amount) for start, amount in live))
            if self.lost_before is not None:
                b.history_lost_before = self.lost_before
        for rec in records:
            if rec.seq <= self.cursor or rec.outcome is Outcome.REFUSED:
                continue
            # A call made before the first push named no budget: it counts in every one the push brings.
            named = (list(fresh.values()) if rec.awaiting_policy
                     else [fresh[n] for n in rec.counted_budgets() if n in fresh])
            if named:
                spend = Spend.of_record(rec)
                for budget in named:
                    budget.count(spend)

    def prune(self, now: dt.datetime) -> None:
        """Drop slots that no longer count at `now`, and loose sums too old to count anywhere."""
        now_us = to_us(now)
        while self._expiries and self._expiries[0][0] <= now_us:
            end, _, wid, start = heapq.heappop(self._expiries)
            budget, limit_shape, key = wid
            keys = self.slots.get(budget, {}).get(limit_shape, {})
            slots = keys.get(key)
            if slots is None or slots.get(start, (None, None))[1] != end:
                continue  # evicted with its key, or gone already
            del slots[start]
            self._encoder.changed(wid, start)
            if not slots:
                del keys[key]
                if not keys:
                    del self.slots[budget][limit_shape]
                    if not self.slots[budget]:
                        del self.slots[budget]
        if self.loose:
            oldest = (now_us - LOOSE_KEEP // dt.timedelta(microseconds=1)) // US
            for name in list(self.loose):
                sums = self.loose[name]
                stale = [k for k in sums if k[2] < oldest]
                for k in stale:
                    del sums[k]
                if stale:
                    self._encoder.loose_changed(name)
                if not sums:
                    del self.loose[name]

    def _attribute(self, b: BudgetState, shapes: dict[str, LimitShape], spend: Spend, now_us: int) -> None:
        at_us = to_us(spend.at)
        for limit, key, amount in b.contributions(spend):
            start, end = self._slot(b, limit, at_us)
            if end > now_us:
                self._add(b.name, shapes[limit.name], key, start, end, amount)

    def _slot(self, b: BudgetState, limit: Limit, at_us: int) -> tuple[int, int]:
        """The slot `at_us` falls in, (start, end of counting), with the windows' own edges (windows.py)."""
        seconds = limit.rolling_seconds
        if seconds is not None:
            g_us = rolling_granularity(seconds) * US
            start = at_us // g_us * g_us
            return start, start + g_us + seconds * US
        assert limit.period is not None
        cache = (limit.period.value, b.spec.time_zone)
        span = self._periods.get(cache)
        if span is None or not span[0] <= at_us < span[1]:
            lo, hi = period_bounds(limit.period, b.spec.time_zone, from_us(at_us))
            span = self._periods[cache] = (to_us(lo), to_us(hi))
        return span

    def _add(self, budget: str, limit_shape: LimitShape, key: str | None, start: int, end: int,
             amount: Decimal) -> None:
        keys = self.slots.setdefault(budget, {}).setdefault(limit_shape, {})
        slots = keys.pop(key, None)  # re-inserted last: the most recently used key
        if slots is None:
            slots = {}
            if key is not None and len(keys) >= MAX_KEYS_PER_LIMIT:
                oldest = next(iter(keys))
                del keys[oldest]
                self._encoder.evicted((budget, limit_shape, oldest))
        keys[key] = slots
        wid = (budget, limit_shape, key)
        held = slots.get(start)
        if held is None:
            expiry = (end, next(self._tie), wid, start)
            if self._bulk:
                self._expiries.append(expiry)
            else:
                heapq.heappush(self._expiries, expiry)
            slots[start] = (amount, end)
        else:
            slots[start] = (_EXACT.add(held[0], amount), end)
        self._encoder.changed(wid, start)

    def _keep_loose(self, name: str, spend: Spend) -> None:
        sums = self.loose.setdefault(name, {})
        key = (spend.user, spend.model, to_us(spend.at) // US)
        tokens, usd, requests = sums.get(key, (0, Decimal(0), 0))
        sums[key] = (tokens + spend.tokens, _EXACT.add(usd, spend.cost_usd), requests + spend.requests)
        self._encoder.loose_changed(name)

    def _take_loose(self, name: str) -> Iterator[Spend]:
        sums = self.loose.pop(name, {})
        if sums:
            self._encoder.loose_changed(name)
        for (user, model, second), (tokens, usd, requests) in sums.items():
            yield Spend(user, model, from_us(second * US), tokens, usd, requests)

    # ----- the file's contents ----------------------------------------------------------------------------

    @property
    def windows(self) -> int:
        return sum(len(keys) for limits in self.slots.values() for keys in limits.values())

    def encode(self) -> Pieces:
        """The document's head and its pieces (checkpoint_format.document joins them).

        Runs on the event loop (it reads live state); joining, hashing and writing are CheckpointFile's.
        """
        return self._encoder.encode(self.slots, self.loose, self.cursor, self.lost_before)

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """A checkpoint from the file's bytes; CheckpointError for anything but a whole, valid file."""
        doc = parse(data)
        cp = cls(doc.cursor, doc.lost_before)
        cp._bulk = True
        for budget, limit_shape, key, start, end, amount in doc.slots:
            cp._add(budget, limit_shape, key, start, end, amount)
        for budget, spend in doc.loose:
            cp._keep_loose(budget, spend)
        heapq.heapify(cp._expiries)
        cp._bulk = False
        return cp


__all__ = ["Checkpoint", "CheckpointError", "shapes_of"]
