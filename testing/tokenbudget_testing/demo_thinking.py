"""The demo's third act: a ThinkTier calibrating from the thinking its classes actually do.

A real sidecar with three classes (lookup, support, research) on tiers sized by guesswork gets a seeded
stream of Claude calls through the official anthropic SDK, each asking for more thinking than its tier
(the sidecar lowers it) and needing a class-typical amount. The live table is the sidecar's own
`GET /thinking`; once a class has `minSamples` calls it recommends P95 x 1.2, rounded to a valid budget.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from dataclasses import dataclass, field

import anthropic
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tokenbudget_api import names
from tokenbudget_api.admin import ClassReport, ThinkingAnswer

SEED = 16
CALLS_PER_CLASS = 30
MIN_SAMPLES = 20
# class -> (tier, tier budget, typical thinking need, spread): the tiers are the guesses a team starts from
CLASSES = {"lookup": ("shallow", 4096, 700, 200), "support": ("standard", 12_000, 3000, 900),
           "research": ("deep", 32_000, 11_000, 3000)}


def tier_policy() -> list[dict[str, object]]:
    tiers = [{"name": tier, "budgetTokens": budget} for tier, budget, _, _ in CLASSES.values()]
    classes = [{"name": name, "tier": tier, "match": {"headerValues": [name]}}
               for name, (tier, _, _, _) in CLASSES.items()]
    return [{"namespace": "demo", "name": "reasoning", "generation": 1, "spec": {
        "selector": {"matchLabels": {"team": "chat"}}, "tiers": tiers, "classes": classes, "defaultTier": "standard",
        "calibration": {"percentile": 95, "headroomPercent": 20, "minSamples": MIN_SAMPLES}}}]


@dataclass
class Calibration:
    """Per class: the tier's budget before, the P95 seen and the recommended budget after."""

    classes: dict[str, ClassReport] = field(default_factory=dict)

    def before(self, name: str) -> int:
        return CLASSES[name][1]


def _thinking(admin: str) -> ThinkingAnswer:
    with urllib.request.urlopen(f"{admin}/thinking", timeout=5) as resp:  # loopback only
        return ThinkingAnswer.model_validate(json.loads(resp.read()))


def _classes(answer: ThinkingAnswer) -> dict[str, ClassReport]:
    return {c.name: c for t in answer.think_tiers for c in t.classes if c.name in CLASSES}


def _view(found: dict[str, ClassReport]) -> Table:
    table = Table(title="GET /thinking", title_justify="left", show_edge=False)
    for col in ("class", "tier budget", "samples", "P95 thinking", "truncated %", "recommended"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name in CLASSES:
        c = found.get(name)
        if c is None:
            table.add_row(name, f"{CLASSES[name][1]:,}", "0", "-", "-", "-")
            continue
        table.add_row(name, f"{c.budget_tokens:,}", str(c.samples), f"{c.p95:,}" if c.p95 is not None else "-",
                      c.truncation_percent or "-",
                      f"{c.recommended_budget_tokens:,}" if c.recommended_budget_tokens else f"after {MIN_SAMPLES}")
    return table


def run(data: str, admin: str, out: Console, pace_s: float) -> Calibration:
    rng = random.Random(SEED)
    # An explicit timeout: the SDK refuses a non-streamed call with a large max_tokens under its default one.
    client = anthropic.Anthropic(base_url=f"{data}/anthropic", api_key="demo", max_retries=0, timeout=60.0)
    plan = [name for name in CLASSES for _ in range(CALLS_PER_CLASS)]
    rng.shuffle(plan)
    announced: set[str] = set()
    found: dict[str, ClassReport] = {}
    with Live(_view(found), console=out, refresh_per_second=8) as live:
        for i, name in enumerate(plan, 1):
            _, _, need, spread = CLASSES[name]
            thinking = max(64, int(rng.gauss(need, spread)))
            client.messages.create(
                model="claude-sonnet-4-5", max_tokens=48_000, messages=[{"role": "user", "content": "Which plan?"}],
                thinking={"type": "enabled", "budget_tokens": 40_000},
                extra_headers={names.CLASS_HEADER: name, "x-upstream-reasoning-tokens": str(thinking),
                               "x-upstream-output-tokens": "60"})
            if i % 3 == 0 or i == len(plan):
                found = _classes(_thinking(admin))
                live.update(_view(found))
                for c in found.values():
                    if c.recommended_budget_tokens and c.name not in announced:
                        announced.add(c.name)
                        live.console.print(f"  call {i:>2}  {c.name}: {c.samples} samples, P95 {c.p95:,} -> "
                                           f"recommends {c.recommended_budget_tokens:,} thinking tokens "
                                           f"(tier has {c.budget_tokens:,})", highlight=False)
            if pace_s:
                time.sleep(pace_s)
    out.print()
    result = Calibration(found)
    for name, c in found.items():
        if c.recommended_budget_tokens:
            change = 100 * (c.recommended_budget_tokens - c.budget_tokens) / c.budget_tokens
            out.print(f"  {name:9} {c.budget_tokens:>7,} -> {c.recommended_budget_tokens:>7,} thinking tokens a call "
                      f"({change:+.0f} %)", highlight=False)
    out.print("  The operator puts these in ThinkTier status (recommendedBudgetTokens); copy them into the spec "
              "in Git.")
    return result
