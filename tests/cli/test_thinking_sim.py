"""`simulate -f THINKTIER.yaml`: per class, the recommendation a trace gives and what it would cut.

The trace is generated so the answer is known within the histogram's 1 % error: lookup thinks 10, 20, ...,
1,000 tokens (P95 ≈ 950, x 1.2 = 1,140, rounded up to 1,280); research thinks 8,000 tokens 96 times and
30,000 four times (P95 8,000, x 1.2 = 9,600 → 9,728), so those four would be cut to 9,728.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import yaml

from tokenbudget_api.thinktier import ThinkTier
from tokenbudget_api.usage import Usage, UsageRecord
from tokenbudget_cli.thinking_sim import calibrate
from tokenbudget_cli.trace import write

START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
TIER = {"apiVersion": "tokenbudget.io/v1alpha1", "kind": "ThinkTier", "metadata": {"name": "r", "namespace": "t"},
        "spec": {"selector": {}, "defaultTier": "standard",
                 "tiers": [{"name": "shallow", "budgetTokens": 4096}, {"name": "standard", "budgetTokens": 8192},
                           {"name": "deep", "budgetTokens": 32000}],
                 "classes": [{"name": "lookup", "tier": "shallow", "match": {"headerValues": ["lookup"]}},
                             {"name": "research", "tier": "deep", "match": {"headerValues": ["research"]}}],
                 "calibration": {"minSamples": 20, "percentile": 95}}}


def record(i: int, klass: str | None, thinking: int) -> UsageRecord:
    return UsageRecord(seq=i, request_id=f"r{i}", time=START + dt.timedelta(seconds=i), upstream="anthropic",
                       dialect="anthropic", operation="messages", model="claude-sonnet-4-5", status=200,
                       usage=Usage(input_tokens=50, output_tokens=thinking + 40, reasoning_tokens=thinking),
                       think_class=klass, duration_ms=100)


def trace() -> list[UsageRecord]:
    calls = [record(i, "lookup", 10 * i) for i in range(1, 101)]
    calls += [record(200 + i, "research", 30_000 if i % 25 == 0 else 8000) for i in range(1, 101)]
    calls.append(record(400, None, 300))  # a reasoning call no class matched: the default tier
    return calls


def test_each_class_gets_its_recommendation_and_what_it_would_cut() -> None:
    classes = {c.name: c for c in calibrate(ThinkTier.model_validate(TIER), trace())}
    lookup, research, rest = classes["lookup"], classes["research"], classes["unclassified"]
    assert (lookup.tier, lookup.budget_tokens, lookup.samples) == ("shallow", 4096, 100)
    assert lookup.recommended_budget_tokens == 1280
    assert lookup.cut_percent == "0.00"
    assert lookup.thinking_tokens_after == lookup.thinking_tokens == 10 * sum(range(1, 101))
    assert research.recommended_budget_tokens == 9728
    assert research.cut_percent == "4.00"
    assert research.thinking_tokens == 96 * 8000 + 4 * 30_000
    assert research.thinking_tokens_after == 96 * 8000 + 4 * 9728
    assert (rest.tier, rest.samples, rest.recommended_budget_tokens) == ("standard", 1, None)  # below minSamples


def test_the_command_takes_a_thinktier_file_alone(tmp_path: Path) -> None:
    (tmp_path / "tier.yaml").write_text(yaml.safe_dump(TIER))
    with (tmp_path / "calls.jsonl").open("w") as f:
        write(trace(), f)
    args = [sys.executable, "-m", "tokenbudget_cli", "simulate", "-f", str(tmp_path / "tier.yaml"), "--trace",
            str(tmp_path / "calls.jsonl")]
    doc = json.loads(subprocess.run([*args, "-o", "json"], capture_output=True, text=True, timeout=120,
                                    check=True).stdout)
    assert doc["admitted"]["calls"] == 201  # no TokenBudget: nothing refused
    assert [c["recommendedBudgetTokens"] for c in doc["thinking"]["t/r"]] == [1280, 9728, None]
    table = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True).stdout
    research = next(line.split() for line in table.splitlines() if line.startswith("research"))
    assert research == ["research", "deep", "32,000", "100", research[4], "0.00", "9,728", "888,000", "806,912", "4.00"]
