"""What the window snapshot stored with every acknowledgement costs (checkpoint.py), and a restart's rebuild.

A sidecar with a ledger and one budget (a daily window, a per-user daily window, an hourly rolling window)
holds N users' windows; each round appends a few records and acknowledges them, as the operator does every
2 s. Timed in the same run: the ack with the snapshot (`State.acknowledge`) against the bare ledger ack
(`UsageLog.ack`) it replaced, then a restart on the same directory and the operator's policy push, which
rebuilds every window from the snapshot plus the unacknowledged records.

Prints a table; asserts nothing. Run: `.venv/bin/python benchmarks/sidecar_restart.py [--users 1000]`.
The ack runs on the event loop (as the ledger's own ack write always has): its time is added latency for
calls in flight at that moment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_sidecar.app import create_state
from tokenbudget_sidecar.proxy import State
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.usage import Usage, UsageRecord

POLICY = {"budgets": [{"namespace": "team-a", "name": "shared", "spec": {
    "selector": {}, "limits": [{"name": "day", "period": "Day", "tokens": 10**9},
                               {"name": "per-user", "period": "Day", "tokens": 10**9, "per": "User"},
                               {"name": "hour", "duration": "1h", "tokens": 10**9}]}}]}


def spend(state: State, users: int, calls: int, start: int) -> None:
    """`calls` settled calls spread over `users`, counted and appended as settlement does."""
    budget = state.admission.budgets[0]
    now = state.clock.now()
    for i in range(start, start + calls):
        user = f"user-{i % users}"
        for window in budget.windows_for("gpt-4o-mini", user):
            window.counter.add(120, now)
        state.usage_log.append(UsageRecord(
            request_id=f"r{i}", time=now, upstream="openai", dialect="openai", operation="chat",
            model="gpt-4o-mini", user=user, budgets=["team-a/shared"],
            usage=Usage(input_tokens=100, output_tokens=20), cost_usd=Decimal("0.0001")))


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"{statistics.median(ordered) * 1000:.2f} / {ordered[int(len(ordered) * 0.99) - 1] * 1000:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    policy = SidecarPolicy.model_validate(POLICY)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp)
        settings = Settings(ledger_dir=ledger)
        state = create_state(settings, SidecarPolicy())
        state.apply(policy)
        spend(state, args.users, args.users, 0)  # every user has a window
        seq = state.usage_log.last_seq
        with_snapshot: list[float] = []
        bare: list[float] = []
        for r in range(args.rounds):
            spend(state, args.users, 4, seq + r * 4)
            cursor = state.usage_log.last_seq
            t0 = time.perf_counter()
            if r % 2:
                state.acknowledge(cursor)
                with_snapshot.append(time.perf_counter() - t0)
            else:
                state.usage_log.ack(cursor)
                bare.append(time.perf_counter() - t0)
        windows = len(state.admission.budgets[0].windows)
        state.acknowledge(state.usage_log.last_seq)
        spend(state, args.users, 500, 10**6)  # unacknowledged at the restart
        size = (ledger / "ack.json").stat().st_size
        state.usage_log.close()

        t0 = time.perf_counter()
        again = create_state(settings, SidecarPolicy())
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        again.apply(policy)
        rebuilt = time.perf_counter() - t0
        day = again.admission.budgets[0].windows["day", None].used(dt.datetime.now(dt.UTC))
        again.usage_log.close()

    print(f"{windows} windows ({args.users} users x per-user + day + hour), {args.rounds} ack rounds, 4 calls each")
    print("| step | p50 / p99 ms |")
    print("|---|---|")
    print(f"| ack, ledger only (before) | {ms(bare)} |")
    print(f"| ack with window snapshot | {ms(with_snapshot)} |")
    print(f"snapshot in ack.json: {size / 1024:.0f} KiB")
    print(f"restart: ledger open {started * 1000:.1f} ms; operator policy applied and {windows} windows rebuilt "
          f"(+500 unacknowledged records) {rebuilt * 1000:.1f} ms; day window counts {day} tokens "
          f"(expected {(args.users + args.rounds * 4 + 500) * 120})")


if __name__ == "__main__":
    main()
