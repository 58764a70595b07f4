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
import json
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from tokenbudget_api.tokenbudget import Limit
from tokenbudget_api.usage import UsageRecord
from tokenbudget_api.windows import as_utc
from tokenbudget_operator.reconciler import usage_status
from tokenbudget_operator.reconciler.conditions import k8s_time
from tokenbudget_operator.reconciler.insights import InsightBook
from tokenbudget_operator.reconciler.spend import SpendCounters
from tokenbudget_operator.reconciler.usage_status import Folded
from tokenbudget_operator.reconciler.usage_sums import (
    ANONYMOUS,
    BudgetSums,
    ConsumerSlot,
    ConsumerSums,
    Entry,
    Slots,
    Totals,
    WindowSums,
    consumer_limit,
    key_of,
    shape_of,
)
from tokenbudget_operator.reconciler.views import BudgetView

STATE_VERSION = 1


class Aggregator:
    """Per-pod cursors and per-budget sums; pure (no I/O), persisted through `state()`/`restore()`.

    `top`: consumers of each kind in status; `keys_per_window`: entries of a per-User/per-Model window
    in status (the fullest first); `max_pending`: records kept per budget before its first `status()`
    (the oldest are dropped beyond it, so a deleted budget's records cannot grow without bound); `spend`:
    the cumulative counters for Prometheus (spend.py), kept and persisted with the cursors.
    """

    def __init__(self, *, top: int = 5, keys_per_window: int = 10, max_pending: int = 200_000,
                 spend: SpendCounters | None = None) -> None:
        self.spend = spend if spend is not None else SpendCounters()
        self.top = top
        self.keys_per_window = keys_per_window
        self.max_pending = max_pending
        self._cursors: dict[str, int] = {}
        self._pod_names: dict[str, str] = {}
        self._pending: dict[str, list[Entry]] = {}
        self._budgets: dict[str, BudgetSums] = {}
        self.dropped = 0  # pending records dropped over max_pending (a metric)
        self.insights = InsightBook()  # waste features by budget and hour (insights.py), committed with the sums

    # ----- input -----

    def cursor(self, pod_uid: str) -> int:
        """The seq to acknowledge (POST /usage/ack) once `state()` is persisted; 0 before any record."""
        return self._cursors.get(pod_uid, 0)

    def add(self, pod_uid: str, records: Iterable[UsageRecord], *, pod_name: str | None = None,
            last_seq: int | None = None, per_user: Callable[[str], bool] = lambda _: False) -> int:
        """Take one pull's records; returns how many were new (the rest were already counted).

        `last_seq` is the pull's `lastSeq`: below the cursor, the sidecar lost its log (restarted with no
        ledger) and numbers from 1 again, so the cursor restarts with it. `per_user(budget)`: whether the
        budget has a per-User limit, so its spend counters carry a user label.
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
            self.insights.add(record, self._pod_names.get(pod_uid, pod_uid))
            entry = Entry.from_record(pod_uid, record)
            self.spend.add(record, per_user)
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
        self.spend.forget_budget(budget)
        self.insights.forget(budget)

    # ----- folding -----

    def _fold(self, view: BudgetView) -> tuple[BudgetSums, Folded,
                                              tuple[Slots, ConsumerSums]]:
        spec = view.spec
        sums = self._budgets.setdefault(view.key, BudgetSums())
        limits = list(spec.limits or [])
        windows: list[tuple[Limit, Slots, WindowSums]] = []
        for lim in limits:
            shape = shape_of(lim, spec.time_zone)
            ws = sums.windows.get(lim.name)
            if ws is None or ws.shape != shape:
                ws = sums.windows[lim.name] = WindowSums(shape)
            windows.append((lim, Slots(lim, spec.time_zone), ws))
        for name in set(sums.windows) - {lim.name for lim in limits}:
            del sums.windows[name]
        consumer = consumer_limit(limits)
        cshape = shape_of(consumer, spec.time_zone)
        if sums.consumers is None or sums.consumers.shape != cshape:
            sums.consumers = ConsumerSums(cshape)
        cslots = Slots(consumer, spec.time_zone)

        pending = self._pending.pop(view.key, [])
        for entry in pending:
            if entry.counted and view.key in entry.budgets:
                for lim, slots, ws in windows:
                    by = ws.slots.setdefault(slots.slot(entry.time), {})
                    by.setdefault((key_of(lim, entry), entry.pod), Totals()).add(entry.tokens, entry.cost)
                cs = sums.consumers.slots.setdefault(cslots.slot(entry.time), ConsumerSlot())
                cs.pods.setdefault(entry.pod, Totals()).add(entry.tokens, entry.cost)
                if entry.user:
                    cs.users.setdefault(entry.user, Totals()).add(entry.tokens, entry.cost)
            for budget, action in entry.dry_run:
                if budget == view.key:
                    cs = sums.consumers.slots.setdefault(cslots.slot(entry.time), ConsumerSlot())
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

    # ----- output (usage_status.py reads the folded windows) -----

    def settled(self, view: BudgetView, window: str, key: str | None, now: dt.datetime) -> dict[str, Decimal]:
        """Per pod uid, what usage pulls settled in `window` (and `key`) at `now`, in the limit's unit.

        The `settled` input of `leases.WindowInput`; pods that are gone are included (usage_status.settled).
        """
        return usage_status.settled(self._fold(view)[1], window, key, as_utc(now))

    def key_usage(self, view: BudgetView, window: str, now: dt.datetime) -> dict[str, dict[str, Decimal]]:
        """Per key of a per-User/per-Model window, what each pod (uid) settled in it at `now`."""
        return usage_status.key_usage(self._fold(view)[1], window, as_utc(now))

    def status(self, view: BudgetView, now: dt.datetime) -> dict[str, Any]:
        """The usage part of `TokenBudgetStatus` for `view` at `now`, in wire form (camelCase).

        Also advances the ladder's hysteresis state, as the sidecar does per window: a stage is left only
        when use falls `hysteresisPercent` below its threshold. Calling twice with the same `now` gives the
        same answer.
        """
        now = as_utc(now)
        sums, windows, (cslots, consumers) = self._fold(view)
        entries, fullest = usage_status.window_entries(windows, now, self.keys_per_window)
        pct_max = fullest[0] if fullest else 0
        current = consumers.live(cslots, now)
        out: dict[str, Any] = {
            "observedGeneration": view.generation,
            "stage": usage_status.ladder_stage(sums, view.spec, pct_max),
            "usedPercent": pct_max,
            "windows": entries,
            "topConsumers": current.top(self.top, self._pod_names),
            "lastUpdated": k8s_time(now),
        }
        if fullest is not None:
            out["tightestWindow"] = fullest[1]
        dry = current.dry_run_rows()
        if dry:
            out["dryRun"] = dry
        return out

    def period_totals(self, view: BudgetView, window: str, period_start: dt.datetime
                      ) -> tuple[Limit, Totals, Totals, str | None] | None:
        """What calendar window `window` counted in the period starting at `period_start`, if still kept.

        The end-of-period summary. The aggregator keeps the previous period of a calendar window
        (`Slots.keep_after`), so this answers for the period that just ended (usage_status.period_totals).
        """
        return usage_status.period_totals(self._fold(view)[1], window, period_start)

    # ----- persistence -----

    def state(self) -> dict[str, Any]:
        """Everything needed to resume: cursors, sums, waiting records, hysteresis. JSON-serializable."""
        return {
            "version": STATE_VERSION,
            "cursors": dict(self._cursors),
            "podNames": dict(self._pod_names),
            "pending": {b: [e.wire() for e in entries] for b, entries in self._pending.items() if entries},
            "budgets": {name: sums.wire() for name, sums in self._budgets.items()},
            "spend": self.spend.wire(),
            "insights": self.insights.wire(),
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
        self._budgets = {name: BudgetSums.from_wire(raw) for name, raw in state.get("budgets", {}).items()}
        # A state written before the counters existed has none: they start at 0 (counting starts then).
        self.spend.restore(state.get("spend", {}))
        self.insights = InsightBook.from_wire(state.get("insights", {}))  # absent in states written before it


__all__ = ["ANONYMOUS", "Aggregator", "Entry", "Totals"]
