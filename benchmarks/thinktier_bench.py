"""What both ThinkTier benchmarks share: the four classes, the policy they run under, and the bench that
drives calls through the real sidecar to the test upstream in this process.

Why a module of its own: thinktier_savings.py (fixed budgets against calibrated ones) and
thinktier_closed_loop.py (autoApply over simulated days) replay the same workload through the same rig;
with the rig here, the savings script imports the closed loop and nothing imports back. The workload and
what rho means are described in thinktier_savings.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import statistics
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.thinktier import EffortThresholds
from tokenbudget_sidecar.app import create_app, create_state
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.state import State
from tokenbudget_sidecar.thinking.providers import anthropic_max_output, effort_for, fit_anthropic, gemini_budget_range
from tokenbudget_testing.upstream import DEFAULT_EFFORT_BUDGETS, LEDGER
from tokenbudget_testing.upstream import create_app as create_upstream

HOST = "127.0.0.1"
MAX_BUDGET, SMALL_BUDGET = 65_536, 1024
ANSWER_TOKENS = 64  # every answer needs this much room
ANTHROPIC_ROOM = 1024  # the apps' max_tokens: their answer room
THRESHOLDS = EffortThresholds(low_up_to=1024, medium_up_to=8192)
MIN_SAMPLES, PERCENTILE, HEADROOM = 100, 95, 20
PROMPT = "Work it out and answer in one paragraph: how many primes are there below 10^6?"


@dataclass(frozen=True)
class Klass:
    name: str
    dialect: str
    model: str
    median: float
    sigma: float
    share: float

    def need(self, rnd: random.Random) -> int:
        return max(1, round(rnd.lognormvariate(math.log(self.median), self.sigma)))

    def true_quantile(self, q: float) -> float:
        return self.median * math.exp(statistics.NormalDist().inv_cdf(q) * self.sigma)


CLASSES = [
    Klass("lookup", "gemini", "gemini-2.5-flash", 700, 0.45, 0.40),
    Klass("support", "anthropic", "claude-sonnet-4-6", 2500, 0.50, 0.30),
    Klass("analysis", "openai", "o3", 3000, 0.40, 0.20),
    Klass("planning", "anthropic", "claude-opus-4-6", 14_000, 0.35, 0.10),
]


def provider_budget(k: Klass, tier_budget: int) -> int:
    """The thinking budget the provider enforces for a tier (the same mapping the sidecar writes)."""
    if k.dialect == "anthropic":
        fitted = fit_anthropic(tier_budget, ANTHROPIC_ROOM, anthropic_max_output(k.model))
        assert fitted is not None
        return fitted[0]
    if k.dialect == "gemini":
        lo, hi = gemini_budget_range(k.model)
        return min(max(tier_budget, lo), hi)
    return DEFAULT_EFFORT_BUDGETS[effort_for(tier_budget, THRESHOLDS)]


def policy(upstream: str, budgets: dict[str, int], percentile: int = PERCENTILE) -> SidecarPolicy:
    tiers = [{"name": f"{k.name}-tier", "budgetTokens": budgets[k.name]} for k in CLASSES]
    tiers.append({"name": "default", "budgetTokens": 8192})
    return SidecarPolicy.model_validate({
        "upstreams": [{"name": d, "baseURL": upstream, "dialect": {"openai": "OpenAI", "anthropic": "Anthropic",
                                                                     "gemini": "Gemini"}[d]}
                      for d in ("openai", "anthropic", "gemini")],
        "thinkTiers": [{"name": "bench", "spec": {
            "selector": {}, "defaultTier": "default", "tiers": tiers,
            "classes": [{"name": k.name, "tier": f"{k.name}-tier", "match": {"headerValues": [k.name]}}
                        for k in CLASSES],
            "openAIEffort": {"lowUpTo": THRESHOLDS.low_up_to, "mediumUpTo": THRESHOLDS.medium_up_to},
            "calibration": {"percentile": percentile, "headroomPercent": HEADROOM, "minSamples": MIN_SAMPLES},
        }}],
    })


def request(k: Klass, sidecar: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    if k.dialect == "gemini":
        return (f"{sidecar}/gemini/v1beta/models/{k.model}:generateContent",
                {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]}, {})
    if k.dialect == "anthropic":
        return (f"{sidecar}/anthropic/v1/messages",
                {"model": k.model, "max_tokens": ANTHROPIC_ROOM, "messages": [{"role": "user", "content": PROMPT}]},
                {"anthropic-version": "2023-06-01"})
    return (f"{sidecar}/openai/v1/chat/completions",
            {"model": k.model, "messages": [{"role": "user", "content": PROMPT}]}, {})


@dataclass
class Outcome:
    klass: str
    need: int
    budget: int  # what the provider enforced
    thinking: int  # what the provider billed as thinking


class Bench:
    def __init__(self, state: State, upstream_app: web.Application, sidecar: str, upstream: str,
                 client: aiohttp.ClientSession) -> None:
        self.state, self.upstream_app, self.sidecar, self.upstream, self.client = (
            state, upstream_app, sidecar, upstream, client)
        self.by_name = {k.name: k for k in CLASSES}

    def use(self, budgets: dict[str, int], percentile: int = PERCENTILE) -> None:
        self.state.apply(policy(self.upstream, budgets, percentile))

    async def run(self, calls: list[tuple[str, int]], budgets: dict[str, int], rho: float,
                  concurrency: int = 8) -> list[Outcome]:
        ledger = self.upstream_app[LEDGER]
        ledger.clear()
        gate = asyncio.Semaphore(concurrency)
        ids: list[tuple[str, str, int, int]] = []

        async def one(name: str, need: int) -> None:
            k = self.by_name[name]
            enforced = provider_budget(k, budgets[name])
            wants = need if need >= enforced else need + round(rho * (enforced - need))
            url, body, headers = request(k, self.sidecar)
            headers = {**headers, "x-tokenbudget-class": name, "x-upstream-reasoning-tokens": str(wants),
                       "x-upstream-output-tokens": str(ANSWER_TOKENS)}
            async with gate, self.client.post(url, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{name}: HTTP {resp.status}: {(await resp.text())[:300]}")
                ids.append((resp.headers["x-upstream-request-id"], name, need, enforced))

        await asyncio.gather(*(one(name, need) for name, need in calls))
        served = {r.request_id: r for r in await ledger.wait_finished_async(len(calls), within=60)}
        log = self.state.usage_log
        log.ack(log.last_seq)  # keep the in-memory usage log small
        return [Outcome(name, need, enforced, served[rid].reasoning_tokens) for rid, name, need, enforced in ids]

    async def calibrate(self, rounds: int, per_class: int, rho: float, seed: int,
                        percentile: int) -> list[dict[str, int]]:
        """Learning rounds from the maximum, each applying the sidecar's recommendations (autoApply)."""
        budgets = {k.name: MAX_BUDGET for k in CLASSES}
        history = [dict(budgets)]
        rnd = random.Random(seed)
        for _ in range(rounds):
            self.use(budgets, percentile)
            calls = [(k.name, k.need(rnd)) for k in CLASSES for _ in range(per_class)]
            rnd.shuffle(calls)
            await self.run(calls, budgets, rho)
            snap = self.state.thinking.report().dump()["thinkTiers"][0]  # type: ignore[index]
            for c in snap["classes"]:
                if c["name"] in budgets and c["recommendedBudgetTokens"] is not None:
                    budgets[c["name"]] = c["recommendedBudgetTokens"]
            history.append(dict(budgets))
        return history


def calls(rnd: random.Random, n: int) -> list[tuple[str, int]]:
    """`n` calls of the mixed workload, (class, the thinking it needs), classes drawn by their shares."""
    names = [k.name for k in CLASSES]
    by_name = {k.name: k for k in CLASSES}
    return [(name, by_name[name].need(rnd)) for name in rnd.choices(names, [k.share for k in CLASSES], k=n)]


def workload(n: int, seed: int) -> list[tuple[str, int]]:
    return calls(random.Random(seed), n)


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    per: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        per[o.klass].append(o)
    return {
        "spend": sum(o.thinking for o in outcomes),
        "lost": sum(o.need > o.budget for o in outcomes),
        "trunc": {name: 100 * sum(o.need > o.budget for o in os) / len(os) for name, os in per.items()},
        "budget": {name: statistics.median(o.budget for o in os) for name, os in per.items()},
        "spend_by": {name: sum(o.thinking for o in os) for name, os in per.items()},
    }


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, f"http://{HOST}:{runner.addresses[0][1]}"


@contextlib.asynccontextmanager
async def running(budgets: dict[str, int]) -> AsyncIterator[Bench]:
    """The test upstream and a sidecar whose tiers start at `budgets`, served on loopback, and a bench on them."""
    upstream_app = create_upstream()
    up_runner, upstream = await serve(upstream_app)
    settings = Settings(data_port=0, admin_port=0)
    state = create_state(settings, policy(upstream, budgets))
    side_runner, sidecar = await serve(create_app(settings, state))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:
            yield Bench(state, upstream_app, sidecar, upstream, client)
    finally:
        await side_runner.cleanup()
        await up_runner.cleanup()
