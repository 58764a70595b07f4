#!/usr/bin/env python3
"""ThinkTier autoApply's closed loop over simulated days, against a fixed maximum and the declared tiers.

Part of benchmarks/thinktier_savings.py (same sidecar + test upstream in process, same four classes and
the same rho, the share of budget slack a model thinks through; the rig both use is
benchmarks/thinktier_bench.py); run with it::

    .venv/bin/python benchmarks/thinktier_savings.py --closed-loop        # adds about 5 minutes
    .venv/bin/python benchmarks/thinktier_closed_loop.py [--quick]        # the closed loop alone

Each simulated day has `periods` periods (an hour each); each period's calls go through the sidecar under
the budgets in force, then the operator's own rule (`thinktier_apply.step`: the sidecar's recommendation,
bounded by minBudgetTokens..maxBudgetTokens — here the defaults, 1024..the declared tier —, at most
`maxStepPercent` a step, only with `minSamples` calls under the budget in force) sets the next period's
budgets, exactly as the operator pushes them into the sidecars' policy. The same calls also run under a
fixed maximum (65536 for every class) and under the declared tiers (what a team would write by hand from
the design's pattern: shallow 4096, standard 8192, deep 32768). Per day: thinking spend and truncation per
class for each; the last line is the saving at <= 2 % truncation in every class.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
from typing import Any

from thinktier_bench import CLASSES, HEADROOM, MAX_BUDGET, MIN_SAMPLES, Bench, Outcome, calls, running, summarize

from tokenbudget_api.thinktier import Calibration
from tokenbudget_operator.reconciler.thinktier_apply import Applied, step

DECLARED = {"lookup": 4096, "support": 8192, "analysis": 8192, "planning": 32768}
STEP_PERCENT = 25
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


async def closed_loop(bench: Bench, days: int, per_day: int, periods: int, rho: float, seed: int,
                      percentiles: list[int]) -> None:
    rnd = random.Random(seed)
    schedule = [[calls(rnd, per_day // periods) for _ in range(periods)] for _ in range(days)]
    baselines: dict[str, list[dict[str, Any]]] = {"fixed max": [], "declared": []}
    settled: dict[str, list[Outcome]] = {"fixed max": [], "declared": []}  # the second half of the days
    for name, budgets in (("fixed max", {k.name: MAX_BUDGET for k in CLASSES}), ("declared", DECLARED)):
        bench.use(budgets)
        for d, day in enumerate(schedule):
            outcomes = await bench.run([c for p in day for c in p], budgets, rho)
            baselines[name].append(summarize(outcomes))
            if d >= days // 2:
                settled[name] += outcomes
    names = [k.name for k in CLASSES]
    print(f"\nclosed loop, rho = {rho:g}: {days} days x {per_day} calls, {periods} periods a day, step "
          f"{STEP_PERCENT}%, minSamples {MIN_SAMPLES}, bounds 1024..declared {DECLARED}")
    for pct in percentiles:
        cal = Calibration(percentile=pct, headroom_percent=HEADROOM, min_samples=MIN_SAMPLES, auto_apply="Enabled",
                          max_step_percent=STEP_PERCENT, step_interval="1h")
        applied: dict[str, Applied | None] = {n: None for n in names}
        budgets = dict(DECLARED)
        bench.use(budgets, pct)
        now = T0
        head = (f"{'P' + str(pct) + ' day':<8} {'loop spend':>11} {'vs max':>8} {'vs declared':>12} "
                + " ".join(f"{'trunc% ' + n:>15}" for n in names) + "  budgets at day end")
        print(head)
        print("-" * len(head))
        loop_settled: list[Outcome] = []
        for d, day in enumerate(schedule):
            outcomes = []
            for period in day:
                bench.use(budgets, pct)
                outcomes += await bench.run(period, budgets, rho)
                snap = bench.state.thinking.report().dump()["thinkTiers"][0]  # type: ignore[index]
                for c in snap["classes"]:
                    if c["name"] in budgets:
                        moved = step(cal, DECLARED[c["name"]], applied[c["name"]], c["recommendedBudgetTokens"],
                                     c["samples"], now)
                        applied[c["name"]], budgets[c["name"]] = moved, moved.budget
                now += dt.timedelta(hours=1)
            r = summarize(outcomes)
            if d >= days // 2:
                loop_settled += outcomes
            mx, dec = baselines["fixed max"][d]["spend"], baselines["declared"][d]["spend"]
            vs_max, vs_dec = 100 * (r["spend"] / mx - 1), 100 * (r["spend"] / dec - 1)
            print(f"{d + 1:<8} {r['spend']:>11,} {vs_max:>+7.1f}% {vs_dec:>+11.1f}% "
                  + " ".join(f"{r['trunc'].get(n, 0.0):>15.2f}" for n in names) + "  "
                  + " ".join(f"{budgets[n]}" for n in names))
        tail = f"days {days // 2 + 1}-{days}"
        loop = summarize(loop_settled)
        for name, outcomes in (*settled.items(), ("loop", loop_settled)):
            b = summarize(outcomes)
            print(f"{name:<10} {b['spend']:>11,} " + " " * 20 + " ".join(f"{b['trunc'].get(n, 0.0):>15.2f}"
                                                                        for n in names) + f"  ({tail})")
        worst = max(loop["trunc"].values())
        mx, dec = (summarize(settled[n])["spend"] for n in ("fixed max", "declared"))
        print(f"P{pct}+{HEADROOM}% closed loop, {tail}: {100 * (1 - loop['spend'] / mx):.1f}% below fixed max, "
              f"{100 * (1 - loop['spend'] / dec):.1f}% below the declared tiers, worst class truncation {worst:.2f}% "
              f"({'<=' if worst <= 2 else '>'} 2%)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rho", type=float, nargs="*", default=[0.0, 0.25])
    parser.add_argument("--seed", type=int, default=20262)
    parser.add_argument("--percentiles", type=int, nargs="*", default=[95, 98])
    args = parser.parse_args()
    await run(args.quick, args.rho, args.seed, args.percentiles)
    return 0


async def run(quick: bool, rhos: list[float], seed: int, percentiles: list[int]) -> None:
    days, per_day, periods = (3, 1200, 4) if quick else (5, 2400, 6)
    async with running(DECLARED) as bench:
        for rho in rhos:
            await closed_loop(bench, days, per_day, periods, rho, seed, percentiles)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
