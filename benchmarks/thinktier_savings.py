#!/usr/bin/env python3
"""What calibrated think tiers save against one fixed budget for every reasoning call.

Run on demand (it prints tables and asserts nothing)::

    .venv/bin/python benchmarks/thinktier_savings.py            # about two minutes
    .venv/bin/python benchmarks/thinktier_savings.py --quick    # fewer calls, under a minute
    .venv/bin/python benchmarks/thinktier_savings.py --closed-loop   # + autoApply's closed loop over days

The real sidecar and the test upstream run in this process on one event loop; the load is plain HTTP in
each provider's wire format (no SDK: its overhead would only slow the replay). A seeded mixed workload
of four classes, each on its own provider and with its own distribution of the thinking it *needs*:

    class     model               need (lognormal)       share
    lookup    gemini-2.5-flash    median   700, s 0.45    40%
    support   claude-sonnet-4-6   median  2500, s 0.50    30%
    analysis  o3 (chat)           median  3000, s 0.40    20%
    planning  claude-opus-4-6     median 14000, s 0.35    10%

Three policies get the same calls (same needs, paired): every class at a fixed maximum (a 65536 tier,
which each provider caps at its own maximum: Gemini Flash 24576, OpenAI effort high), every class at a
fixed small budget (1024, the smallest every provider accepts), and calibrated tiers: starting from the
maximum, each learning round runs `minSamples` calls per class through the sidecar, reads its
recommendation (P95 x 1.2, rounded up to a multiple of 256) from the admin snapshot and applies it as
that class's tier, as `autoApply` would. The evaluation then replays the same calls as the other two.

Truncation: the test upstream cuts thinking silently at the provider-side budget; a call whose budget
is below its need is counted as truncated (its answer is lost: the model had to stop thinking early).
The sidecar sees these as calls that thought up to their whole budget (BudgetBound).

Spend depends on one thing the stand-in cannot know: whether a model given room thinks past what it
needs. With rho = 0 it stops at its need whatever its budget, so a large budget costs nothing extra; with
rho > 0 it fills that share of the slack (budget - need), as reasoning models do when a higher effort or a
larger budget lets them (the premise behind "3-8x the spend for no gain"). The model's thinking is set
per call through ``x-upstream-reasoning-tokens`` = need + rho x (budget - need), where budget is what the
provider enforces for the tier the sidecar chose. Tables are printed for each rho, so the result can be
read against whatever rho one believes.

OpenAI's effort levels are opaque budgets; the ThinkTier here maps budgets onto them with thresholds
that match the test upstream's table (low 1024, medium 8192, high 32768): `openAIEffort: {lowUpTo: 1024,
mediumUpTo: 8192}`, i.e. the smallest effort whose budget covers the tier.

`--closed-loop` adds the loop the operator runs with `autoApply: Enabled` (benchmarks/thinktier_closed_loop.py):
bounded, stepped moves from the declared tiers over simulated days, against a fixed maximum and the declared
tiers, reporting the saving at <= 2 % truncation.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import sys
import time
from typing import Any

import thinktier_closed_loop
from thinktier_bench import (
    CLASSES,
    HEADROOM,
    MAX_BUDGET,
    MIN_SAMPLES,
    PERCENTILE,
    SMALL_BUDGET,
    provider_budget,
    request,
    running,
    summarize,
    workload,
)

from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_sidecar.dialects import DIALECTS
from tokenbudget_sidecar.state import State


def print_table(rho: float, results: dict[str, dict[str, Any]], n: int) -> bool:
    names = [k.name for k in CLASSES]
    base = results["fixed max"]["spend"]
    print(f"\nrho = {rho:g} (share of budget slack a model thinks through), {n} evaluation calls")
    head = f"{'policy':<12} {'thinking spend':>15} {'vs max':>8} {'lost':>6}  " + "  ".join(
        f"{'trunc% ' + name:>16}" for name in names)
    print(head)
    print("-" * len(head))
    for policy_name, r in results.items():
        saving = 100 * (1 - r["spend"] / base) if base else 0.0
        cells = "  ".join(f"{r['trunc'].get(name, 0.0):>16.2f}" for name in names)
        print(f"{policy_name:<12} {r['spend']:>15,} {-saving:>+7.1f}% {r['lost']:>6}  {cells}")
    met = False
    for policy_name, r in results.items():
        if not policy_name.startswith("cal."):
            continue
        saving = 100 * (1 - r["spend"] / base) if base else 0.0
        worst = max(r["trunc"].values())
        ok = saving >= 40 and worst <= 2
        met = met or ok
        print(f"target (>= 40% below fixed max, <= 2% truncation in every class) with {policy_name}: "
              f"{'MET' if ok else 'NOT MET'} ({saving:.1f}% saved, worst class {worst:.2f}%)")
    return met


async def allocation_time(state: State) -> tuple[float, float]:
    """Microseconds per Thinking.apply (classify + rewrite), median and p99, over the four classes."""
    samples = []
    names = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}
    for k in CLASSES * 500:
        dialect = DIALECTS[DialectName(names[k.dialect])]
        url, body, _ = request(k, "")
        path = "/" + url.split("/", 2)[2]  # /anthropic/v1/messages -> /v1/messages
        call = dialect.parse(dialect.operation("POST", path) or "", path, body, None)
        body = copy.deepcopy(body)
        started = time.perf_counter()
        state.thinking.apply(dialect, call, body, url, {"x-tokenbudget-class": k.name}, 40)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls (noisier per-class truncation)")
    parser.add_argument("--rho", type=float, nargs="*", default=[0.0, 0.25, 0.5])
    parser.add_argument("--seed", type=int, default=20261)
    parser.add_argument("--percentiles", type=int, nargs="*", default=[PERCENTILE, 98],
                        help="calibration.percentile values to learn with (95 is the spec's default)")
    parser.add_argument("--closed-loop", action="store_true", help="also run autoApply's closed loop over days")
    args = parser.parse_args()
    n_eval = 1000 if args.quick else 3000
    rounds, per_class = (3, MIN_SAMPLES) if args.quick else (4, 2 * MIN_SAMPLES)

    verdicts = {}
    async with running({k.name: MAX_BUDGET for k in CLASSES}) as bench:
        print("ThinkTier savings: sidecar + test upstream in process; seeded workload", args.seed)
        print("classes: " + ", ".join(f"{k.name} ({k.model}, need median {k.median:g}, true P95 "
                                      f"{k.true_quantile(0.95):.0f}, {k.share:.0%})" for k in CLASSES))
        calls = workload(n_eval, args.seed)
        for rho in args.rho:
            started = time.perf_counter()
            results = {}
            for name, budgets in (("fixed max", {k.name: MAX_BUDGET for k in CLASSES}),
                                  ("fixed small", {k.name: SMALL_BUDGET for k in CLASSES})):
                bench.use(budgets)
                results[name] = summarize(await bench.run(calls, budgets, rho))
            learned = {}
            for pct in args.percentiles:
                history = await bench.calibrate(rounds, per_class, rho, args.seed + 1, pct)
                bench.use(history[-1], pct)
                results[f"cal. P{pct}+{HEADROOM}%"] = summarize(await bench.run(calls, history[-1], rho))
                learned[pct] = (history, bench.state.thinking.report().dump()["thinkTiers"][0])  # type: ignore[index]
            verdicts[rho] = print_table(rho, results, n_eval)
            for pct, (history, snap) in learned.items():
                print(f"calibration at P{pct}+{HEADROOM}% (tier budget per learning round; "
                      "provider-enforced budget in brackets):")
                for k in CLASSES:
                    steps = " -> ".join(str(h[k.name]) for h in history)
                    print(f"  {k.name:<9} {steps}  [{provider_budget(k, history[-1][k.name])}]  "
                          f"(true P{pct} x 1.2 = {k.true_quantile(pct / 100) * 1.2:.0f})")
                print("  the sidecar's view of that calibrated evaluation (GET /thinking):")
                for c in snap["classes"]:
                    if c["samples"]:
                        print(f"    {c['name']:<9} samples {c['samples']:>5}  P50 {c['p50']:>6}  "
                              f"P95 {c['p95']:>6}  budget-bound {c['budgetBoundPercent']:>6}%  "
                              f"under-use {c['underUsePercent']:>6}%  "
                              f"recommends {c['recommendedBudgetTokens']}")
                print("    conditions: " + ", ".join(f"{c['type']}={c['status']}" for c in snap["conditions"]))
            print(f"({time.perf_counter() - started:.0f} s)")
        median_us, p99_us = await allocation_time(bench.state)
        print(f"\nallocation (Thinking.apply: classify + rewrite): median {median_us:.0f} us, p99 {p99_us:.0f} us")
    print("\nverdict by rho: " + ", ".join(f"{rho:g}: {'met' if met else 'not met'}" for rho, met in verdicts.items()))
    if args.closed_loop:
        await thinktier_closed_loop.run(args.quick, args.rho, args.seed + 1, args.percentiles)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
