"""What the usage checkpoint costs per acknowledgement (checkpoint.py), and what a restart costs.

A sidecar with a ledger and one budget (a daily window, a per-user daily window, a rolling hour) holds
N users' windows. Each round settles a batch of calls, as settlement does (counted, then appended), and
acknowledges them as the operator does every 2 s, through `State.acknowledge`: the records are counted
into the checkpoint and encoded on the event loop, the file is written and fsynced on a thread, then the
ledger persists the cursor. In the same run, the bare ledger acknowledgement (`UsageLog.ack`) it wraps.
Then a restart on the same directory with some calls unacknowledged: the ledger is opened, the checkpoint
loaded, and the operator's policy applied, which seeds every window from the checkpoint and the ledger.

Prints a table; asserts nothing. Run: `.venv/bin/python benchmarks/sidecar_restart.py [--users 1000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.usage import Usage, UsageRecord
from tokenbudget_sidecar.amounts import Spend
from tokenbudget_sidecar.app import create_state
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.state import State

NAME = "team-a/shared"
POLICY = {"budgets": [{"namespace": "team-a", "name": "shared", "spec": {
    "selector": {}, "limits": [{"name": "day", "period": "Day", "tokens": 10**12},
                               {"name": "per-user", "period": "Day", "tokens": 10**12, "per": "User"},
                               {"name": "hour", "duration": "1h", "tokens": 10**12}]}}]}
T = TypeVar("T")


def spend(state: State, users: int, calls: int, start: int, spread: bool = False) -> None:
    """`calls` settled calls spread over `users`: counted in the windows, then appended, as settlement does.

    `spread`: stamped across the last hour, one of 120 rolling buckets each (the worst case for rolling windows).
    """
    (budget,) = state.admission.budgets
    now = state.clock.now()
    for i in range(start, start + calls):
        user = f"user-{i % users}"
        at = now - dt.timedelta(seconds=30 * ((i // users) % 118)) if spread else now
        budget.count(Spend(user, "gpt-4o-mini", at, 120, Decimal("0.0001")))
        state.usage_log.append(UsageRecord(
            request_id=f"r{i}", time=at, upstream="openai", dialect="openai", operation="chat",
            model="gpt-4o-mini", user=user, budgets=[NAME],
            usage=Usage(input_tokens=100, output_tokens=20), cost_usd=Decimal("0.0001")))


def timed(into: list[float], fn: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[-1] += time.perf_counter() - t0
    return wrapper


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"{statistics.median(ordered) * 1000:.2f} / {ordered[max(int(len(ordered) * 0.99) - 1, 0)] * 1000:.2f}"


async def run(args: argparse.Namespace) -> None:
    policy = SidecarPolicy.model_validate(POLICY)
    if args.per_user_hour:
        policy = SidecarPolicy.model_validate({"budgets": [{**POLICY["budgets"][0], "spec": {  # type: ignore[index]
            **POLICY["budgets"][0]["spec"], "limits": [  # type: ignore[index]
                *POLICY["budgets"][0]["spec"]["limits"],  # type: ignore[index]
                {"name": "user-hour", "duration": "1h", "tokens": 10**12, "per": "User"}]}}]})
    fill = args.users * (118 if args.per_user_hour else 1)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(ledger_dir=Path(tmp))
        state = create_state(settings, SidecarPolicy())
        state.apply(policy)
        assert state.checkpoint_file is not None
        spend(state, args.users, fill, 0, args.per_user_hour)  # every user has a window (and 118 buckets)
        await state.acknowledge(state.usage_log.last_seq)
        on_loop: list[float] = []
        absorb = state.checkpoint.absorb
        state.checkpoint.absorb = timed(on_loop, state.checkpoint.absorb)  # type: ignore[method-assign]
        state.checkpoint.encode = timed(on_loop, state.checkpoint.encode)  # type: ignore[method-assign]
        with_checkpoint: list[float] = []
        bare: list[float] = []
        seq = state.usage_log.last_seq
        for r in range(args.rounds):
            spend(state, args.users, args.calls, seq + r * args.calls, args.per_user_hour)
            cursor = state.usage_log.last_seq
            t0 = time.perf_counter()
            if r % 2:
                on_loop.append(0.0)
                await state.acknowledge(cursor)
                with_checkpoint.append(time.perf_counter() - t0)
            else:
                absorb(state.usage_log.upto(cursor), state.admission.budgets, cursor, state.clock.now())  # untimed
                t0 = time.perf_counter()
                state.usage_log.ack(cursor)  # the bare ledger ack
                bare.append(time.perf_counter() - t0)
        windows = len(state.admission.budgets[0].windows)
        size = state.checkpoint_file.last_bytes
        spend(state, args.users, args.unacked, 10**7)  # unacknowledged at the restart
        day_before = state.admission.budgets[0].windows["day", None].used(dt.datetime.now(dt.UTC))
        await asyncio.to_thread(state.usage_log.close)

        t0 = time.perf_counter()
        again = create_state(settings, SidecarPolicy())  # ledger replay + checkpoint load, startup policy
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        again.apply(policy)  # the operator's push: every window seeded
        seeded = time.perf_counter() - t0
        day_after = again.admission.budgets[0].windows["day", None].used(dt.datetime.now(dt.UTC))
        await asyncio.to_thread(again.usage_log.close)

    extra = " + per-user rolling hour, calls spread over 118 buckets" if args.per_user_hour else ""
    print(f"{windows} windows ({args.users} users x per-user day + day + rolling hour{extra}); {args.rounds} rounds of "
          f"{args.calls} settled calls, every other one acknowledged through the checkpoint")
    print("| per acknowledgement | p50 / p99 ms |")
    print("|---|---|")
    print(f"| ledger ack only (UsageLog.ack) | {ms(bare)} |")
    print(f"| State.acknowledge, wall time (checkpoint written + fsynced on a thread, then the ledger ack) "
          f"| {ms(with_checkpoint)} |")
    print(f"| of which on the event loop (count {args.calls} records + encode changed windows) | {ms(on_loop)} |")
    print(f"checkpoint file: {size / 1024:.0f} KiB")
    print(f"restart with {args.unacked} unacknowledged records: ledger replay + checkpoint load "
          f"{started * 1000:.1f} ms; operator's policy applied, {windows} windows seeded {seeded * 1000:.1f} ms; "
          f"day window {day_after} tokens (before the restart {day_before})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--calls", type=int, default=50, help="calls settled between two acknowledgements")
    parser.add_argument("--unacked", type=int, default=5000, help="unacknowledged records at the restart")
    parser.add_argument("--per-user-hour", action="store_true",
                        help="add a per-user rolling hour and spread calls over it: ~120 slots per user")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
