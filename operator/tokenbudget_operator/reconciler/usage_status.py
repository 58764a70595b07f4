"""What a budget's folded sums say (aggregate.py folds them): the status's windows and ladder stage, what each
pod settled for the leases, and a calendar window's end-of-period totals.

Why apart from the aggregator: the aggregator's job is the exactly-once bookkeeping (cursors, pending
records, what is persisted); these are pure reads of one budget's windows at an instant, each a different
view for a different reader (status_loop, lease_loop, notify_loop), and they change with those readers.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from tokenbudget_api.tokenbudget import Limit, Stage, TokenBudgetSpec
from tokenbudget_api.windows import as_utc, limit_amount, percent_used
from tokenbudget_operator.reconciler.conditions import k8s_time
from tokenbudget_operator.reconciler.usage_sums import (
    ZERO,
    BudgetSums,
    Slots,
    Totals,
    WindowSums,
    fmt,
    ladder_digest,
    unit_of,
)

Folded = list[tuple[Limit, Slots, WindowSums]]  # each limit of the spec, its slot rules and its sums


def settled(windows: Folded, window: str, key: str | None, now: dt.datetime) -> dict[str, Decimal]:
    """Per pod uid, what usage pulls settled in `window` (and `key`) at `now`, in the limit's unit.

    `key` None on a per-User/per-Model limit means every key, as the lease every key shares does: each
    pod's fullest key.
    """
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


def key_usage(windows: Folded, window: str, now: dt.datetime) -> dict[str, dict[str, Decimal]]:
    """Per key of a per-User/per-Model window, what each pod (uid) settled in it at `now`."""
    out: dict[str, dict[str, Decimal]] = {}
    for lim, slots, ws in windows:
        if lim.name != window or lim.per is None:
            continue
        for start in slots.live(ws.slots, now):
            for (k, pod), totals in ws.slots[start].items():
                if k is not None:
                    by_pod = out.setdefault(k, {})
                    by_pod[pod] = by_pod.get(pod, ZERO) + totals.amount(lim)
    return out


def window_entries(windows: Folded, now: dt.datetime, keys_per_window: int
                   ) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
    """The status's `windows[]` (the fullest `keys_per_window` keys of each), and the fullest (percent, name)."""
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
        for pct, used, k, resets in rows[:keys_per_window]:
            entry: dict[str, Any] = {"name": lim.name, "unit": unit_of(lim).value, "used": fmt(used),
                                     "limit": fmt(cap), "percent": pct, "remaining": fmt(max(cap - used, ZERO))}
            if k is not None:
                entry["key"] = k
            if resets is not None:
                entry["resetsAt"] = k8s_time(resets)
            entries.append(entry)
            if fullest is None or pct > fullest[0]:
                fullest = (pct, lim.name)
    return entries, fullest


def ladder_stage(sums: BudgetSums, spec: TokenBudgetSpec, pct_max: int) -> str:
    """The ladder's stage at `pct_max`, advancing the hysteresis state kept in `sums`, as the sidecar does
    per window: a stage is left only when use falls `hysteresisPercent` below its threshold."""
    ladder = list(spec.ladder or [])
    digest = ladder_digest(ladder, spec.hysteresis_percent)
    if sums.ladder != digest:
        sums.ladder, sums.step = digest, -1
    step = sums.step
    while step + 1 < len(ladder) and pct_max >= ladder[step + 1].at:
        step += 1
    while step >= 0 and pct_max < ladder[step].at - spec.hysteresis_percent:
        step -= 1
    sums.step = step
    return Stage(ladder[step].action.value).value if step >= 0 else Stage.NORMAL.value


def period_totals(windows: Folded, window: str, period_start: dt.datetime
                  ) -> tuple[Limit, Totals, Totals, str | None] | None:
    """What calendar window `window` counted in the period starting at `period_start`, if still kept.

    (limit, totals of every key, totals of the fullest key, that key); None for a rolling window, an
    unknown window or a pruned period.
    """
    for lim, _, ws in windows:
        if lim.name != window or lim.period is None:
            continue
        rows = ws.slots.get(as_utc(period_start), {})
        total, by_key = Totals(), dict[str | None, Totals]()
        for (k, _pod), totals in rows.items():
            total.merge(totals)
            by_key.setdefault(k, Totals()).merge(totals)
        if not by_key:
            return lim, total, total, None
        key, fullest = max(by_key.items(), key=lambda kv: (kv[1].amount(lim), kv[0] or ""))
        return lim, total, fullest, key
    return None


__all__ = ["Folded", "key_usage", "ladder_stage", "period_totals", "settled", "window_entries"]
