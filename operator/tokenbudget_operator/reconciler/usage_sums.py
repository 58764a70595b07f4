"""What the aggregator keeps: one `Entry` per usage record, `Totals` per slot, and per budget the sums of each
window and of its consumers, with the slot arithmetic (calendar periods or rolling buckets, as windows.py
cuts them) and their JSON form in the usage-state ConfigMap. aggregate.py folds records into these.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tokenbudget_api.tokenbudget import LadderStep, Limit, LimitKey, Period, Unit
from tokenbudget_api.usage import Outcome, UsageRecord
from tokenbudget_api.windows import ManualClock, RollingWindow, as_utc, period_bounds, rolling_granularity

ZERO = Decimal(0)
ANONYMOUS = "anonymous"  # the sidecar's key for per-User windows when a call names no user
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NOMINAL = {Period.MINUTE: 60, Period.HOUR: 3600, Period.DAY: 86400, Period.WEEK: 7 * 86400,
            Period.MONTH: 31 * 86400}
_CONSUMER_DEFAULT = Limit(name="day", period=Period.DAY, requests=1)  # period of consumers without limits


# ----- what is kept per record ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """The parts of one usage record the status needs; shared by every budget it counts against."""

    time: dt.datetime
    pod: str
    user: str | None
    model: str
    tokens: int
    cost: Decimal
    counted: bool  # not refused: counts against the budgets it names
    budgets: tuple[str, ...]  # the budgets it counts in (UsageRecord.counted_budgets)
    dry_run: tuple[tuple[str, str], ...]  # (budget, action) pairs, each at most once per record

    @classmethod
    def from_record(cls, pod: str, record: UsageRecord) -> Entry:
        dry: list[tuple[str, str]] = []
        for decision in record.decisions:
            parts = decision.split(":")
            if len(parts) == 3 and parts[1] == "DryRun" and (parts[0], parts[2]) not in dry:
                dry.append((parts[0], parts[2]))
        return cls(
            time=as_utc(record.time), pod=pod, user=record.user, model=record.model,
            tokens=record.usage.total_tokens, cost=record.cost_usd if record.cost_usd is not None else ZERO,
            counted=record.outcome is not Outcome.REFUSED, budgets=tuple(record.counted_budgets()), dry_run=tuple(dry),
        )

    def wire(self) -> list[Any]:
        return [self.time.isoformat(), self.pod, self.user, self.model, self.tokens, str(self.cost),
                self.counted, list(self.budgets), [list(d) for d in self.dry_run]]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Entry:
        return cls(time=as_utc(dt.datetime.fromisoformat(raw[0])), pod=raw[1], user=raw[2], model=raw[3],
                   tokens=int(raw[4]), cost=Decimal(raw[5]), counted=bool(raw[6]), budgets=tuple(raw[7]),
                   dry_run=tuple((str(b), str(a)) for b, a in raw[8]))


@dataclass
class Totals:
    """Tokens, dollars and calls: all three kept, so a limit switching unit needs no recount."""

    tokens: int = 0
    cost: Decimal = ZERO
    requests: int = 0

    def add(self, tokens: int, cost: Decimal, requests: int = 1) -> None:
        self.tokens += tokens
        self.cost += cost
        self.requests += requests

    def merge(self, other: Totals) -> None:
        self.add(other.tokens, other.cost, other.requests)

    def amount(self, limit: Limit) -> Decimal:
        if limit.tokens is not None:
            return Decimal(self.tokens)
        if limit.cost_usd is not None:
            return self.cost
        return Decimal(self.requests)

    def wire(self) -> list[Any]:
        return [self.tokens, str(self.cost), self.requests]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> Totals:
        return cls(int(raw[0]), Decimal(str(raw[1])), int(raw[2]))


# ----- windows -------------------------------------------------------------------------------------------


def shape_of(limit: Limit, tz: str) -> list[Any]:
    """What decides which slot a record lands in; a change means the window starts afresh."""
    if limit.period is not None:
        return ["period", limit.period.value, tz, limit.per.value if limit.per else None]
    return ["rolling", limit.rolling_seconds, limit.per.value if limit.per else None]


def unit_of(limit: Limit) -> Unit:
    if limit.tokens is not None:
        return Unit.TOKENS
    return Unit.USD if limit.cost_usd is not None else Unit.REQUESTS


def _nominal_seconds(limit: Limit) -> int:
    return _NOMINAL[limit.period] if limit.period is not None else limit.rolling_seconds or 0


class Slots:
    """Sums of one window by slot: a calendar period (keyed by its start) or a rolling bucket."""

    def __init__(self, limit: Limit, tz: str) -> None:
        self.limit = limit
        self.tz = tz
        self._bounds: tuple[dt.datetime, dt.datetime] | None = None

    def slot(self, at: dt.datetime) -> dt.datetime:
        """Start of the period (calendar) or bucket (rolling) `at` falls in."""
        if self.limit.period is not None:
            if self._bounds is None or not self._bounds[0] <= at < self._bounds[1]:
                self._bounds = period_bounds(self.limit.period, self.tz, at)
            return self._bounds[0]
        granularity = dt.timedelta(seconds=rolling_granularity(self.limit.rolling_seconds or 1))
        return at - (at - _EPOCH) % granularity

    def live(self, starts: Iterable[dt.datetime], now: dt.datetime) -> list[dt.datetime]:
        """The slots whose usage counts at `now`, decided by the shared window implementation."""
        if self.limit.period is not None:
            current = period_bounds(self.limit.period, self.tz, now)[0]
            return [s for s in starts if s == current]
        out = []
        for start in starts:
            probe = RollingWindow(self.limit.rolling_seconds or 1, ManualClock(now))
            probe.add(1, start)
            if probe.used(now) > 0:
                out.append(start)
        return out

    def resets_at(self, live: dict[dt.datetime, Decimal], now: dt.datetime) -> dt.datetime | None:
        if self.limit.period is not None:
            return period_bounds(self.limit.period, self.tz, now)[1]
        counter = RollingWindow(self.limit.rolling_seconds or 1, ManualClock(now))
        for start in sorted(live):
            counter.add(live[start], start)
        return counter.resets_at(now)

    def keep_after(self, newest: dt.datetime) -> dt.datetime:
        """Slots starting before this can no longer be current once a record at `newest` exists."""
        if self.limit.period is not None:
            before = period_bounds(self.limit.period, self.tz, newest)[0] - dt.timedelta(microseconds=1)
            return period_bounds(self.limit.period, self.tz, before)[0]  # keep the previous period too
        seconds = self.limit.rolling_seconds or 1
        return newest - dt.timedelta(seconds=seconds + 2 * rolling_granularity(seconds))


@dataclass
class WindowSums:
    shape: list[Any]
    slots: dict[dt.datetime, dict[tuple[str | None, str], Totals]] = field(default_factory=dict)


@dataclass
class ConsumerSlot:
    pods: dict[str, Totals] = field(default_factory=dict)
    users: dict[str, Totals] = field(default_factory=dict)
    dry_run: dict[str, Totals] = field(default_factory=dict)

    def top(self, n: int, pod_names: Mapping[str, str]) -> list[dict[str, Any]]:
        """The `n` largest pods and users (by dollars, then tokens), as status.topConsumers."""
        out: list[dict[str, Any]] = []
        for kind, table, names in (("Pod", self.pods, pod_names), ("User", self.users, {})):
            ranked = sorted(table.items(), key=lambda kv: (-kv[1].cost, -kv[1].tokens, kv[0]))
            for name, totals in ranked[:n]:
                out.append({"kind": kind, "name": names.get(name, name), "tokens": totals.tokens,
                            "costUSD": fmt(totals.cost)})
        return out

    def dry_run_rows(self) -> list[dict[str, Any]]:
        """status.dryRun: what a DryRun budget would have done, per action."""
        return [{"action": action, "count": t.requests, "tokens": t.tokens, "costUSD": fmt(t.cost)}
                for action, t in sorted(self.dry_run.items())]


@dataclass
class ConsumerSums:
    shape: list[Any]
    slots: dict[dt.datetime, ConsumerSlot] = field(default_factory=dict)

    def live(self, cslots: Slots, now: dt.datetime) -> ConsumerSlot:
        """The consumers of the slots still current at `now`, summed."""
        total = ConsumerSlot()
        for start in cslots.live(self.slots, now):
            slot = self.slots[start]
            for src, dst in ((slot.pods, total.pods), (slot.users, total.users), (slot.dry_run, total.dry_run)):
                for name, totals in src.items():
                    dst.setdefault(name, Totals()).merge(totals)
        return total


@dataclass
class BudgetSums:
    windows: dict[str, WindowSums] = field(default_factory=dict)
    consumers: ConsumerSums | None = None
    ladder: str = ""  # digest of the ladder the hysteresis step belongs to
    step: int = -1  # ladder index in force (hysteresis state, as in the sidecar)

    def wire(self) -> dict[str, Any]:
        consumers = None
        if self.consumers is not None:
            consumers = {
                "shape": self.consumers.shape,
                "slots": {s.isoformat(): {"pods": {k: t.wire() for k, t in c.pods.items()},
                                          "users": {k: t.wire() for k, t in c.users.items()},
                                          "dryRun": {k: t.wire() for k, t in c.dry_run.items()}}
                          for s, c in self.consumers.slots.items()},
            }
        return {
            "windows": {w: {"shape": ws.shape,
                            "slots": {s.isoformat(): [[k, pod, *t.wire()] for (k, pod), t in by.items()]
                                      for s, by in ws.slots.items()}}
                        for w, ws in self.windows.items()},
            "consumers": consumers,
            "ladder": self.ladder,
            "step": self.step,
        }

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> BudgetSums:
        sums = cls(ladder=str(raw.get("ladder", "")), step=int(raw.get("step", -1)))
        for w, wraw in raw.get("windows", {}).items():
            ws = WindowSums(list(wraw["shape"]))
            for s, rows in wraw["slots"].items():
                ws.slots[instant(s)] = {(row[0], row[1]): Totals.from_wire(row[2:]) for row in rows}
            sums.windows[w] = ws
        craw = raw.get("consumers")
        if craw is not None:
            sums.consumers = ConsumerSums(list(craw["shape"]))
            for s, c in craw["slots"].items():
                sums.consumers.slots[instant(s)] = ConsumerSlot(
                    pods={k: Totals.from_wire(v) for k, v in c["pods"].items()},
                    users={k: Totals.from_wire(v) for k, v in c["users"].items()},
                    dry_run={k: Totals.from_wire(v) for k, v in c["dryRun"].items()},
                )
        return sums


def ladder_digest(ladder: Sequence[LadderStep], hysteresis: int) -> str:
    body = json.dumps([[s.wire() for s in ladder], hysteresis], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def key_of(limit: Limit, entry: Entry) -> str | None:
    if limit.per is LimitKey.USER:
        return entry.user or ANONYMOUS
    if limit.per is LimitKey.MODEL:
        return entry.model
    return None


def consumer_limit(limits: Sequence[Limit]) -> Limit:
    """The budget's longest window (first in spec order on a tie), else a Day."""
    best: Limit | None = None
    for lim in limits:
        if best is None or _nominal_seconds(lim) > _nominal_seconds(best):
            best = lim
    return best or _CONSUMER_DEFAULT


def instant(raw: str) -> dt.datetime:
    return as_utc(dt.datetime.fromisoformat(raw))


def fmt(amount: Decimal) -> str:
    """A decimal string without exponent ("12.5", "0.000123", "1000")."""
    return format(amount.normalize(), "f") if amount else "0"


__all__ = ["ANONYMOUS", "ZERO", "BudgetSums", "ConsumerSlot", "ConsumerSums", "Entry", "Slots", "Totals", "WindowSums",
           "consumer_limit", "fmt", "instant", "key_of", "ladder_digest", "shape_of", "unit_of"]
