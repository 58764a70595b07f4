"""Usage records pulled from sidecars, folded into what a TokenBudget's status says.

`Aggregator.add(pod_uid, records)` takes the records of GET /usage (JSON dicts, `UsageRecord` dumped)
and drops any whose seq is at or below the pod's cursor: a sidecar hands records out in seq order, so a
per-pod high-water mark deduplicates by (pod uid, seq) exactly, and a retried pull never double counts.
`status(budget, now)` folds them into the budget's windows and returns the usage part of
`TokenBudgetStatus` in wire form (windows[], usedPercent, tightestWindow, stage, topConsumers, dryRun).

Windows are counted exactly as the sidecar counts them when it replays its ledger: a record counts
against budget B when it is not refused and names B in `budgets`, at instant `record.time`, in the
calendar period `tokenbudget_api.windows.period_bounds` gives in B's time zone, or in the epoch-aligned
bucket of a rolling window, whose expiry `RollingWindow` itself decides. Nothing about boundaries is
reimplemented here. Folding is lazy: records wait per budget until `status()` brings the spec that says
which windows and zone apply. Like the sidecar, a window whose period, duration, key or zone changes
starts afresh. Top consumers (pods, users) and dry-run "would have" counts cover the current period of
the budget's longest window (a Day in its zone for a budget without limits).

Where the cursors live, and why a ConfigMap (one per operator; shard by namespace past ~1 MiB):
1. The commit point must hold cursors *and* sums in one atomic write, or a crash between the two loses
   or repeats records; `state()` is both, and one ConfigMap update (guarded by resourceVersion, which
   also fences a deposed leader) is atomic across every budget a record counts against.
2. Order: pull -> add -> write ConfigMap -> POST /usage/ack -> patch status. Crash before the ConfigMap
   write: the old state comes back and the unacknowledged records are pulled again, counted once. Crash
   after it but before the ack (or before the status patch): restored cursors drop the re-pulled
   records as duplicates, and the next status patch shows the committed sums: never lost, never twice.
3. Not the CR status: its schema has no room for per-pod cursors (the apiserver prunes unknown fields),
   a budget-by-budget write would not be atomic for records counted against several budgets, and users
   read and `kubectl edit --subresource=status` it; status stays a view rebuilt from committed state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tokenbudget_api.tokenbudget import LadderStep, Limit, LimitKey, Period, Stage, Unit
from tokenbudget_api.usage import Outcome, UsageRecord
from tokenbudget_api.windows import (
    ManualClock,
    RollingWindow,
    as_utc,
    limit_amount,
    percent_used,
    period_bounds,
    rolling_granularity,
)
from tokenbudget_operator.reconciler.conditions import k8s_time
from tokenbudget_operator.reconciler.views import BudgetView

ZERO = Decimal(0)
STATE_VERSION = 1
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
    budgets: tuple[str, ...]
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
            counted=record.outcome is not Outcome.REFUSED, budgets=tuple(record.budgets), dry_run=tuple(dry),
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


def _shape(limit: Limit, tz: str) -> list[Any]:
    """What decides which slot a record lands in; a change means the window starts afresh."""
    if limit.period is not None:
        return ["period", limit.period.value, tz, limit.per.value if limit.per else None]
    return ["rolling", limit.rolling_seconds, limit.per.value if limit.per else None]


def _unit(limit: Limit) -> Unit:
    if limit.tokens is not None:
        return Unit.TOKENS
    return Unit.USD if limit.cost_usd is not None else Unit.REQUESTS


def _nominal_seconds(limit: Limit) -> int:
    return _NOMINAL[limit.period] if limit.period is not None else limit.rolling_seconds or 0


class _Slots:
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
class _WindowSums:
    shape: list[Any]
    slots: dict[dt.datetime, dict[tuple[str | None, str], Totals]] = field(default_factory=dict)


@dataclass
class _ConsumerSlot:
    pods: dict[str, Totals] = field(default_factory=dict)
    users: dict[str, Totals] = field(default_factory=dict)
    dry_run: dict[str, Totals] = field(default_factory=dict)


@dataclass
class _ConsumerSums:
    shape: list[Any]
    slots: dict[dt.datetime, _ConsumerSlot] = field(default_factory=dict)


@dataclass
class _BudgetSums:
    windows: dict[str, _WindowSums] = field(default_factory=dict)
    consumers: _ConsumerSums | None = None
    ladder: str = ""  # digest of the ladder the hysteresis step belongs to
    step: int = -1  # ladder index in force (hysteresis state, as in the sidecar)


def _ladder_digest(ladder: Sequence[LadderStep], hysteresis: int) -> str:
    body = json.dumps([[s.wire() for s in ladder], hysteresis], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _key(limit: Limit, entry: Entry) -> str | None:
    if limit.per is LimitKey.USER:
        return entry.user or ANONYMOUS
    if limit.per is LimitKey.MODEL:
        return entry.model
    return None


def _consumer_limit(limits: Sequence[Limit]) -> Limit:
    """The budget's longest window (first in spec order on a tie), else a Day."""
    best: Limit | None = None
    for lim in limits:
        if best is None or _nominal_seconds(lim) > _nominal_seconds(best):
            best = lim
    return best or _CONSUMER_DEFAULT


# ----- the aggregator ------------------------------------------------------------------------------------


class Aggregator:
    """Per-pod cursors and per-budget sums; pure (no I/O), persisted through `state()`/`restore()`.

    `top`: consumers of each kind in status; `keys_per_window`: entries of a per-User/per-Model window
    in status (the fullest first); `max_pending`: records kept per budget before its first `status()`
    (the oldest are dropped beyond it, so a deleted budget's records cannot grow without bound).
    """

    def __init__(self, *, top: int = 5, keys_per_window: int = 10, max_pending: int = 200_000) -> None:
        self.top = top
        self.keys_per_window = keys_per_window
        self.max_pending = max_pending
        self._cursors: dict[str, int] = {}
        self._pod_names: dict[str, str] = {}
        self._pending: dict[str, list[Entry]] = {}
        self._budgets: dict[str, _BudgetSums] = {}
        self.dropped = 0  # pending records dropped over max_pending (a metric)

    # ----- input -----

    def cursor(self, pod_uid: str) -> int:
        """The seq to acknowledge (POST /usage/ack) once `state()` is persisted; 0 before any record."""
        return self._cursors.get(pod_uid, 0)

    def add(self, pod_uid: str, records: Iterable[UsageRecord], *, pod_name: str | None = None,
            last_seq: int | None = None) -> int:
        """Take one pull's records; returns how many were new (the rest were already counted).

        `last_seq` is the pull's `lastSeq`: below the cursor, the sidecar lost its log (restarted with no
        ledger) and numbers from 1 again, so the cursor restarts with it.
        """
        if pod_name:
            self._pod_names[pod_uid] = pod_name
        cursor = self._cursors.get(pod_uid, 0)
        if last_seq is not None and last_seq < cursor:
            cursor = 0
        added = 0
        for record in sorted(records, key=lambda r: r.seq):
            seq = record.seq
            if seq <= cursor:
                continue
            cursor = seq
            entry = Entry.from_record(pod_uid, record)
            for budget in dict.fromkeys([*entry.budgets, *(b for b, _ in entry.dry_run)]):
                pending = self._pending.setdefault(budget, [])
                pending.append(entry)
                if len(pending) > self.max_pending:
                    del pending[0]
                    self.dropped += 1
            added += 1
        self._cursors[pod_uid] = cursor
        return added

    def forget_pod(self, pod_uid: str) -> None:
        """Drop a pod's cursor after its final pull; what it spent stays in the windows."""
        self._cursors.pop(pod_uid, None)
        self._pod_names.pop(pod_uid, None)

    def forget_budget(self, budget: str) -> None:
        """Drop a deleted budget's sums and waiting records ("namespace/name")."""
        self._budgets.pop(budget, None)
        self._pending.pop(budget, None)

    # ----- folding -----

    def _fold(self, view: BudgetView) -> tuple[_BudgetSums, list[tuple[Limit, _Slots, _WindowSums]],
                                              tuple[_Slots, _ConsumerSums]]:
        spec = view.spec
        sums = self._budgets.setdefault(view.key, _BudgetSums())
        limits = list(spec.limits or [])
        windows: list[tuple[Limit, _Slots, _WindowSums]] = []
        for lim in limits:
            shape = _shape(lim, spec.time_zone)
            ws = sums.windows.get(lim.name)
            if ws is None or ws.shape != shape:
                ws = sums.windows[lim.name] = _WindowSums(shape)
            windows.append((lim, _Slots(lim, spec.time_zone), ws))
        for name in set(sums.windows) - {lim.name for lim in limits}:
            del sums.windows[name]
        consumer = _consumer_limit(limits)
        cshape = _shape(consumer, spec.time_zone)
        if sums.consumers is None or sums.consumers.shape != cshape:
            sums.consumers = _ConsumerSums(cshape)
        cslots = _Slots(consumer, spec.time_zone)

        pending = self._pending.pop(view.key, [])
        for entry in pending:
            if entry.counted and view.key in entry.budgets:
                for lim, slots, ws in windows:
                    by = ws.slots.setdefault(slots.slot(entry.time), {})
                    by.setdefault((_key(lim, entry), entry.pod), Totals()).add(entry.tokens, entry.cost)
                cs = sums.consumers.slots.setdefault(cslots.slot(entry.time), _ConsumerSlot())
                cs.pods.setdefault(entry.pod, Totals()).add(entry.tokens, entry.cost)
                if entry.user:
                    cs.users.setdefault(entry.user, Totals()).add(entry.tokens, entry.cost)
            for budget, action in entry.dry_run:
                if budget == view.key:
                    cs = sums.consumers.slots.setdefault(cslots.slot(entry.time), _ConsumerSlot())
                    cs.dry_run.setdefault(action, Totals()).add(entry.tokens, entry.cost)
        if pending:
            newest = max(e.time for e in pending)
            for _, slots, ws in windows:
                horizon = slots.keep_after(newest)
                for start in [s for s in ws.slots if s < horizon]:
                    del ws.slots[start]
            horizon = cslots.keep_after(newest)
            for start in [s for s in sums.consumers.slots if s < horizon]:
                del sums.consumers.slots[start]
        return sums, windows, (cslots, sums.consumers)

    # ----- output -----

    def settled(self, view: BudgetView, window: str, key: str | None, now: dt.datetime) -> dict[str, Decimal]:
        """Per pod uid, what usage pulls settled in `window` (and `key`) at `now`, in the limit's unit.

        The `settled` input of `leases.WindowInput`; pods that are gone are included. `key` None on a
        per-User/per-Model limit means every key, as the lease every key shares does: each pod's fullest key.
        """
        now = as_utc(now)
        _, windows, _ = self._fold(view)
        for lim, slots, ws in windows:
            if lim.name != window:
                continue
            sums: dict[tuple[str | None, str], Decimal] = {}
            for start in slots.live(ws.slots, now):
                for (k, pod), totals in ws.slots[start].items():
                    if k == key or (key is None and lim.per is not None):
                        sums[k, pod] = sums.get((k, pod), ZERO) + totals.amount(lim)
            out: dict[str, Decimal] = {}
            for (_, pod), amount in sums.items():
                out[pod] = max(out.get(pod, ZERO), amount)
            return out
        return {}

    def status(self, view: BudgetView, now: dt.datetime) -> dict[str, Any]:
        """The usage part of `TokenBudgetStatus` for `view` at `now`, in wire form (camelCase).

        Also advances the ladder's hysteresis state, as the sidecar does per window: a stage is left only
        when use falls `hysteresisPercent` below its threshold. Calling twice with the same `now` gives the
        same answer.
        """
        now = as_utc(now)
        spec = view.spec
        sums, windows, (cslots, consumers) = self._fold(view)
        entries: list[dict[str, Any]] = []
        fullest: tuple[int, str] | None = None
        for lim, slots, ws in windows:
            live = slots.live(ws.slots, now)
            by_key: dict[str | None, dict[dt.datetime, Decimal]] = {}
            for start in live:
                for (k, _pod), totals in ws.slots[start].items():
                    per_slot = by_key.setdefault(k, {})
                    per_slot[start] = per_slot.get(start, ZERO) + totals.amount(lim)
            if lim.per is None:
                by_key.setdefault(None, {})
            cap = limit_amount(lim)
            rows = []
            for k, per_slot in by_key.items():
                used = sum(per_slot.values(), ZERO)
                rows.append((percent_used(used, cap), used, k, slots.resets_at(per_slot, now)))
            rows.sort(key=lambda r: (-r[0], -r[1], r[2] or ""))
            for pct, used, k, resets in rows[: self.keys_per_window]:
                entry: dict[str, Any] = {"name": lim.name, "unit": _unit(lim).value, "used": _fmt(used),
                                         "limit": _fmt(cap), "percent": pct}
                if k is not None:
                    entry["key"] = k
                if resets is not None:
                    entry["resetsAt"] = k8s_time(resets)
                entries.append(entry)
                if fullest is None or pct > fullest[0]:
                    fullest = (pct, lim.name)

        ladder = list(spec.ladder or [])
        digest = _ladder_digest(ladder, spec.hysteresis_percent)
        if sums.ladder != digest:
            sums.ladder, sums.step = digest, -1
        pct_max = fullest[0] if fullest else 0
        step = sums.step
        while step + 1 < len(ladder) and pct_max >= ladder[step + 1].at:
            step += 1
        while step >= 0 and pct_max < ladder[step].at - spec.hysteresis_percent:
            step -= 1
        sums.step = step

        out: dict[str, Any] = {
            "observedGeneration": view.generation,
            "stage": Stage(ladder[step].action.value).value if step >= 0 else Stage.NORMAL.value,
            "usedPercent": pct_max,
            "windows": entries,
            "topConsumers": self._top(cslots, consumers, now),
            "lastUpdated": k8s_time(now),
        }
        if fullest is not None:
            out["tightestWindow"] = fullest[1]
        dry = self._dry_run(cslots, consumers, now)
        if dry:
            out["dryRun"] = dry
        return out

    def _live_consumers(self, cslots: _Slots, consumers: _ConsumerSums, now: dt.datetime) -> _ConsumerSlot:
        total = _ConsumerSlot()
        for start in cslots.live(consumers.slots, now):
            slot = consumers.slots[start]
            for src, dst in ((slot.pods, total.pods), (slot.users, total.users), (slot.dry_run, total.dry_run)):
                for name, totals in src.items():
                    dst.setdefault(name, Totals()).merge(totals)
        return total

    def _top(self, cslots: _Slots, consumers: _ConsumerSums, now: dt.datetime) -> list[dict[str, Any]]:
        live = self._live_consumers(cslots, consumers, now)
        out: list[dict[str, Any]] = []
        for kind, table, names in (("Pod", live.pods, self._pod_names), ("User", live.users, {})):
            ranked = sorted(table.items(), key=lambda kv: (-kv[1].cost, -kv[1].tokens, kv[0]))
            for name, totals in ranked[: self.top]:
                out.append({"kind": kind, "name": names.get(name, name), "tokens": totals.tokens,
                            "costUSD": _fmt(totals.cost)})
        return out

    def _dry_run(self, cslots: _Slots, consumers: _ConsumerSums, now: dt.datetime) -> list[dict[str, Any]]:
        live = self._live_consumers(cslots, consumers, now)
        return [{"action": action, "count": t.requests, "tokens": t.tokens, "costUSD": _fmt(t.cost)}
                for action, t in sorted(live.dry_run.items())]

    # ----- persistence -----

    def state(self) -> dict[str, Any]:
        """Everything needed to resume: cursors, sums, waiting records, hysteresis. JSON-serializable."""
        budgets: dict[str, Any] = {}
        for name, sums in self._budgets.items():
            consumers = None
            if sums.consumers is not None:
                consumers = {
                    "shape": sums.consumers.shape,
                    "slots": {s.isoformat(): {"pods": {k: t.wire() for k, t in c.pods.items()},
                                              "users": {k: t.wire() for k, t in c.users.items()},
                                              "dryRun": {k: t.wire() for k, t in c.dry_run.items()}}
                              for s, c in sums.consumers.slots.items()},
                }
            budgets[name] = {
                "windows": {w: {"shape": ws.shape,
                                "slots": {s.isoformat(): [[k, pod, *t.wire()] for (k, pod), t in by.items()]
                                          for s, by in ws.slots.items()}}
                            for w, ws in sums.windows.items()},
                "consumers": consumers,
                "ladder": sums.ladder,
                "step": sums.step,
            }
        return {
            "version": STATE_VERSION,
            "cursors": dict(self._cursors),
            "podNames": dict(self._pod_names),
            "pending": {b: [e.wire() for e in entries] for b, entries in self._pending.items() if entries},
            "budgets": budgets,
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Replace everything with a `state()` read back (after an operator restart)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unknown aggregator state version {state.get('version')!r}")
        self._cursors = {str(k): int(v) for k, v in state.get("cursors", {}).items()}
        self._pod_names = {str(k): str(v) for k, v in state.get("podNames", {}).items()}
        shared: dict[str, Entry] = {}  # one Entry object per record, however many budgets it waits for
        self._pending = {}
        for budget, raws in state.get("pending", {}).items():
            entries = []
            for raw in raws:
                key = json.dumps(raw)
                entries.append(shared.setdefault(key, Entry.from_wire(raw)))
            self._pending[budget] = entries
        self._budgets = {}
        for name, raw in state.get("budgets", {}).items():
            sums = _BudgetSums(ladder=str(raw.get("ladder", "")), step=int(raw.get("step", -1)))
            for w, wraw in raw.get("windows", {}).items():
                ws = _WindowSums(list(wraw["shape"]))
                for s, rows in wraw["slots"].items():
                    ws.slots[_instant(s)] = {(row[0], row[1]): Totals.from_wire(row[2:]) for row in rows}
                sums.windows[w] = ws
            craw = raw.get("consumers")
            if craw is not None:
                sums.consumers = _ConsumerSums(list(craw["shape"]))
                for s, c in craw["slots"].items():
                    sums.consumers.slots[_instant(s)] = _ConsumerSlot(
                        pods={k: Totals.from_wire(v) for k, v in c["pods"].items()},
                        users={k: Totals.from_wire(v) for k, v in c["users"].items()},
                        dry_run={k: Totals.from_wire(v) for k, v in c["dryRun"].items()},
                    )
            self._budgets[name] = sums


def _instant(raw: str) -> dt.datetime:
    return as_utc(dt.datetime.fromisoformat(raw))


def _fmt(amount: Decimal) -> str:
    """A decimal string without exponent ("12.5", "0.000123", "1000")."""
    return format(amount.normalize(), "f") if amount else "0"


__all__ = ["ANONYMOUS", "Aggregator", "Entry", "Totals"]
