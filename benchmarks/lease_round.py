"""The operator's CPU per lease round, and what each sidecar sends for it, as pods and per-user keys grow.

One lease round reads every sidecar's GET /budgets and allocates each window (leases.py). A per-User
window's snapshot carries one entry per key the pod has seen, which the operator folds into the pod's
fullest key; a whole window carries one. Each sidecar's answer here is a real `BudgetState.report().dump()`
of a budget with one daily window and one per-user daily window after K users called, serialized as the
admin API does; the operator side is `PodReport.from_sidecar` + `LeaseAllocator.allocate` for P pods,
exactly as `Reconciler.lease_round` calls them. HTTP is left out (see operator_propagation.py for that).

Prints a table; asserts nothing. Run: `.venv/bin/python benchmarks/lease_round.py` (`--quick`: a few pods and
keys, the same code paths in well under a second, so tests/test_benchmarks_run.py can check it still runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from decimal import Decimal
from typing import Any

from tokenbudget_api.admin import WindowReport
from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.windows import ManualClock
from tokenbudget_operator.reconciler.lease_types import LeaseKey, PodInput, PodReport, WindowInput
from tokenbudget_operator.reconciler.leases import LeaseAllocator
from tokenbudget_sidecar.budget import BudgetState

NOW = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)
START = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def snapshot(keys: int, fullest_only: bool) -> dict[str, Any]:
    """A sidecar's /budgets entry after `keys` users each made one call, through JSON as on the wire
    (`fullest_only`: as the operator asks for it, `?keys=fullest`)."""
    policy = SidecarPolicy.model_validate({"budgets": [{"namespace": "team-a", "name": "shared", "spec": {
        "selector": {}, "limits": [{"name": "day", "period": "Day", "tokens": 10**9},
                                   {"name": "per-user", "period": "Day", "tokens": 10**6, "per": "User"}]},
        "leases": [{"window": w, "granted": "50000", "periodStart": START.isoformat(),
                    "expiresAt": (NOW + dt.timedelta(minutes=1)).isoformat()} for w in ("day", "per-user")]}]})
    budget = BudgetState(policy.budgets[0], ManualClock(NOW))
    for k in range(keys):
        for window in budget.windows_for("gpt-4o-mini", f"user-{k}"):
            window.counter.add(100 + k % 50, NOW)
    loaded: dict[str, Any] = json.loads(budget.report(fullest_only).model_dump_json(by_alias=True))
    return loaded


def round_time(pods: int, entries: list[dict[str, Any]], window: str, per_key: bool) -> float:
    """Seconds for one allocation of `window` over `pods` pods that all report `entries`."""
    allocator = LeaseAllocator(started=NOW - dt.timedelta(hours=1))
    key = LeaseKey("team-a/shared", window, None, START)
    own = [WindowReport.model_validate(w) for w in entries
           if w["name"] == window and (w["key"] is None) == (not per_key)]
    t0 = time.perf_counter()
    inputs = [PodInput(f"pod-{i}", PodReport.from_sidecar(key, own)) for i in range(pods)]
    allocator.allocate(WindowInput(key, Decimal(10**9), inputs), NOW)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a few pods and keys: checks it runs, not a figure")
    args = parser.parse_args()
    key_counts, pod_counts = ((1, 10), (2, 20)) if args.quick else ((1, 100, 1000), (200, 5000))
    print("Per round: bytes each sidecar sends, and operator ms for one whole window / one per-user window.")
    print("| pods | users per pod | bytes, every key | bytes, fullest key | ms whole | ms per-user, every key "
          "| ms per-user, fullest key |")
    print("|---|---|---|---|---|---|---|")
    for keys in key_counts:
        every, fullest = snapshot(keys, False), snapshot(keys, True)
        sizes = [len(json.dumps({"budgets": [s]})) for s in (every, fullest)]
        for pods in pod_counts:
            whole = round_time(pods, fullest["windows"], "day", per_key=False)
            slow = round_time(pods, every["windows"], "per-user", per_key=True)
            fast = round_time(pods, fullest["windows"], "per-user", per_key=True)
            print(f"| {pods} | {keys} | {sizes[0]:,} | {sizes[1]:,} | {whole * 1000:.1f} | {slow * 1000:.1f} "
                  f"| {fast * 1000:.1f} |")


if __name__ == "__main__":
    main()
