"""`kubectl tokenbudget simulate`: a generated trace whose answer is known, replayed through the real admission code.

The budget: 10,000 tokens per hour, Alert at 50 %, Downgrade gpt-4o -> gpt-4o-mini at 85 %, Block at 95 %.
The trace: 30 calls of 500 tokens (400 in, 100 out), one every 10 s within one hour, so the calls never
overlap and each is admitted on the use of the calls before it. Holds are 400 + 10 % + 100 = 540 tokens.
Call k+1 sees 500·k tokens used: calls 11-17 run at Alert, 18-19 are downgraded (8,500 and 9,000 used),
and from call 20 on (9,500 used, 95 %) the Block stage refuses every call until the hour ends.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from tokenbudget_api.tokenbudget import Stage, TokenBudget
from tokenbudget_api.usage import Usage, UsageRecord
from tokenbudget_cli.simulate import Simulation
from tokenbudget_cli.simulate_report import summarize
from tokenbudget_cli.trace import read, write

START = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
PRICES = [{"model": "gpt-4o", "inputPerMillion": "10", "outputPerMillion": "40"},
          {"model": "gpt-4o-mini", "inputPerMillion": "1", "outputPerMillion": "4"}]


def budget(name: str, enforcement: str = "Enforce") -> dict[str, object]:
    return {"apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget",
            "metadata": {"name": name, "namespace": "team"},
            "spec": {"selector": {"matchLabels": {"app": "x"}}, "enforcement": enforcement,
                     "limits": [{"name": "hourly", "period": "Hour", "tokens": 10_000}],
                     "ladder": [{"at": 50, "action": "Alert"},
                                {"at": 85, "action": "Downgrade", "modelMap": {"gpt-4o": "gpt-4o-mini"}},
                                {"at": 95, "action": "Block"}],
                     "models": {"prices": PRICES}}}


def trace(calls: int = 30) -> list[UsageRecord]:
    return [UsageRecord(seq=i + 1, request_id=f"r{i}", time=START + dt.timedelta(seconds=10 * i), upstream="openai",
                        dialect="openai", operation="chat", model="gpt-4o", status=200, prompt_estimate=400,
                        usage=Usage(input_tokens=400, output_tokens=100), cost_usd=Decimal("0.008"),
                        duration_ms=1000)
            for i in range(calls)]


def test_the_replay_admits_downgrades_and_blocks_exactly_where_the_ladder_says() -> None:
    result = Simulation([TokenBudget.model_validate(budget("team-budget"))]).run(trace())
    s = summarize(result)
    assert s.trace.calls == 30
    assert s.admitted.calls == 19
    assert s.downgraded.calls == 2
    assert s.downgrades == {"gpt-4o->gpt-4o-mini": 2}
    assert s.refused.calls == 11
    assert s.refused_by_reason == {"Block stage": 11}
    # 17 calls at $0.008, 2 at the mini's price (400 x $1 + 100 x $4 per million = $0.0008)
    assert s.admitted.cost_usd == Decimal("0.008") * 17 + Decimal("0.0008") * 2
    assert [(c.stage, c.percent) for c in s.timeline] == [(Stage.ALERT, 50), (Stage.DOWNGRADE, 85),
                                                          (Stage.BLOCK, 95)]
    assert s.timeline[-1].at == (START + dt.timedelta(seconds=181)).isoformat()  # call 19 ends at 3:01
    blocked = [f for f in result.fates if not f.admitted]
    assert all(f.retry_after == pytest.approx(3600 - 190 - 10 * i) for i, f in enumerate(blocked))


def test_the_dry_run_twin_admits_everything_and_counts_what_it_would_have_done() -> None:
    result = Simulation([TokenBudget.model_validate(budget("twin", "DryRun"))]).run(trace())
    s = summarize(result)
    assert s.admitted.calls == 30
    assert s.refused.calls == 0
    assert s.downgraded.calls == 0
    # Not refused, the dry run keeps counting: 500 tokens a call, Block from 95 % (call 20) on.
    assert s.dry_run == {"team/twin": {"Downgrade": 2, "Block": 11}}


def test_a_throttle_step_delays_calls_in_simulated_time_only() -> None:
    spec = budget("slow")
    spec["spec"]["ladder"] = [{"at": 10, "action": "Throttle", "maxRequestsPerMinute": 2}]  # type: ignore[index]
    records = [r.model_copy(update={"time": START + dt.timedelta(seconds=i)}) for i, r in enumerate(trace(6))]
    s = summarize(Simulation([TokenBudget.model_validate(spec)]).run(records))
    # Calls 1-2 run below 10 %; from call 3 (t = 2 s) on, one call per 30 s: call 3 at once, call 4 waits
    # 29 s (from t = 3 s to 32 s), calls 5 and 6 would wait longer than the sidecar's 30 s and are refused.
    assert s.throttled.calls == 2
    assert s.throttle_delay_seconds == pytest.approx(29)  # simulated seconds; the replay takes milliseconds
    assert s.admitted.calls == 4
    assert s.refused_by_reason == {"throttle wait too long": 2}


def test_the_command_reads_the_budget_file_and_the_trace(tmp_path: Path) -> None:
    (tmp_path / "budget.yaml").write_text(yaml.safe_dump_all([budget("team-budget"), budget("twin", "DryRun")]))
    with (tmp_path / "calls.jsonl").open("w") as f:
        write(trace(), f)
    assert len(read(tmp_path / "calls.jsonl")) == 30
    out = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "simulate", "-f", str(tmp_path / "budget.yaml"),
                          "--trace", str(tmp_path / "calls.jsonl"), "-o", "json"],
                         capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(out.stdout)
    assert doc["admitted"]["calls"] == 19  # both budgets apply: the enforced one refuses
    # Both apply to every call, as on a pod both select: the enforced budget refuses first and rewrites the
    # model first, so the twin (which saw only the admitted use) is left nothing of its own to decide.
    assert doc["dryRun"] == {"team/twin": {}}
    table = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "simulate", "-f",
                            str(tmp_path / "budget.yaml"), "--trace", str(tmp_path / "calls.jsonl")],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Block stage x11" in table
    assert "gpt-4o->gpt-4o-mini x2" in table
    assert "\x1b[" not in table  # no colour codes when piped
