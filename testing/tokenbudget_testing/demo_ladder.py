"""The demo's second act: a team budget climbing its ladder, next to its DryRun twin.

Two real sidecars, one enforcing the budget and one running the same budget as DryRun, get the same
seeded workload through the official openai SDK. A live display shows each budget's percent (from the
admin API, `GET /budgets`) and every stage change is printed as it happens, with what the app saw: the
downgrade's model switch (`x-tokenbudget-downgraded`), the block's 429 with its Retry-After.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from dataclasses import dataclass, field

import openai
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from tokenbudget_api.admin import BudgetsAnswer
from tokenbudget_api.tokenbudget import Stage

LIMIT_TOKENS = 40_000
CALLS = 80
SEED = 16
BUDGET_NAME = "team-chat"
WORDS = ("budget", "token", "ladder", "pod", "call", "sidecar")
THRESHOLDS = {Stage.ALERT: 50, Stage.THROTTLE: 80, Stage.DOWNGRADE: 85, Stage.BLOCK: 95}


def budget_spec(enforcement: str) -> dict[str, object]:
    """The team budget: 40,000 tokens an hour with the 50/80/85/95 ladder most teams start from."""
    return {
        "selector": {"matchLabels": {"team": "chat"}}, "enforcement": enforcement,
        "limits": [{"name": "hourly-tokens", "period": "Hour", "tokens": LIMIT_TOKENS}],
        "ladder": [{"at": 50, "action": "Alert"},
                   {"at": 80, "action": "Throttle", "maxRequestsPerMinute": 300},
                   {"at": 85, "action": "Downgrade", "modelMap": {"gpt-4o": "gpt-4o-mini"}},
                   {"at": 95, "action": "Block"}],
    }


def budget_policy(enforcement: str) -> list[dict[str, object]]:
    name = BUDGET_NAME if enforcement == "Enforce" else f"{BUDGET_NAME}-dryrun"
    return [{"namespace": "demo", "name": name, "generation": 1, "spec": budget_spec(enforcement)}]


@dataclass
class Sample:
    at: float  # seconds since the act began
    enforce_percent: int
    twin_percent: int
    stage: Stage


@dataclass
class LadderRun:
    samples: list[Sample] = field(default_factory=list)
    changes: list[tuple[float, Stage]] = field(default_factory=list)
    admitted: int = 0
    downgraded: int = 0
    blocked: int = 0
    would_have: dict[str, int] = field(default_factory=dict)


def _budgets(admin: str) -> BudgetsAnswer:
    with urllib.request.urlopen(f"{admin}/budgets", timeout=5) as resp:  # loopback only
        return BudgetsAnswer.model_validate(json.loads(resp.read()))


def _percent(answer: BudgetsAnswer) -> int:
    return max((w.percent for b in answer.budgets for w in b.windows), default=0)


def _view(run: LadderRun, enforce: BudgetsAnswer, twin: BudgetsAnswer, call: int) -> Table:
    table = Table.grid(padding=(0, 2))
    for answer, label in ((enforce, "Enforce"), (twin, "DryRun twin")):
        pct = _percent(answer)
        stage = answer.budgets[0].stage if answer.budgets else Stage.NORMAL
        table.add_row(f"{label:12}", ProgressBar(total=100, completed=min(pct, 100), width=40), f"{pct:>3}%",
                      stage.value)
    table.add_row("", f"call {call}/{CALLS}: {run.admitted} admitted, {run.downgraded} downgraded, "
                      f"{run.blocked} blocked", "", "")
    return table


def run(data_enforce: str, admin_enforce: str, data_twin: str, admin_twin: str, out: Console,
        pace_s: float) -> LadderRun:
    rng = random.Random(SEED)
    enforce = openai.OpenAI(base_url=f"{data_enforce}/openai/v1", api_key="demo", max_retries=0)
    twin = openai.OpenAI(base_url=f"{data_twin}/openai/v1", api_key="demo", max_retries=0)
    result = LadderRun()
    began = time.monotonic()
    stage, twin_stage = Stage.NORMAL, Stage.NORMAL
    state = (_budgets(admin_enforce), _budgets(admin_twin))
    with Live(Group(_view(result, *state, 0)), console=out, refresh_per_second=8, transient=False) as live:
        for i in range(1, CALLS + 1):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200)))
            headers = {"x-upstream-output-tokens": str(rng.randint(250, 700))}
            messages: list[dict[str, str]] = [{"role": "user", "content": words}]
            note, first = "", False
            try:
                raw = enforce.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=messages, max_tokens=800, extra_headers=headers)  # type: ignore[arg-type]
                result.admitted += 1
                switched = raw.headers.get("x-tokenbudget-downgraded")
                if switched:
                    result.downgraded += 1
                    first = result.downgraded == 1
                    note = f"the app asked for gpt-4o and got {switched.split('->')[-1]} (x-tokenbudget-downgraded)"
            except openai.RateLimitError as exc:
                result.blocked += 1
                first = result.blocked == 1
                note = (f"429 RateLimitError in the SDK, Retry-After {exc.response.headers.get('retry-after')} s "
                        "(when the hour's window resets)")
            twin_headers = twin.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=messages, max_tokens=800, extra_headers=headers).headers  # type: ignore[arg-type]
            state = (_budgets(admin_enforce), _budgets(admin_twin))
            pct = _percent(state[0])
            reported = state[0].budgets[0].stage
            if reported is not stage:
                stage = reported
                result.changes.append((time.monotonic() - began, stage))
                detail = {Stage.ALERT: "an alert is recorded (the operator turns it into an Event)",
                          Stage.THROTTLE: "calls are spaced to 300 a minute",
                          Stage.DOWNGRADE: "gpt-4o calls go to gpt-4o-mini from the next call on",
                          Stage.BLOCK: "calls are refused until the window resets",
                          Stage.NORMAL: "back to normal"}[stage]
                live.console.print(f"  call {i:>2}  [bold]{stage.value}[/] at {pct}%: {detail}")
            if first:
                live.console.print(f"  call {i:>2}  {note}", highlight=False)
            dry = twin_headers.get("x-tokenbudget-dry-run", "").split(",")
            for decision in {d.strip().rsplit(":", 1)[-1] for d in dry if ":DryRun:" in d}:
                result.would_have[decision] = result.would_have.get(decision, 0) + 1
            twin_now = Stage(twin_headers.get("x-tokenbudget-stage", "Normal"))
            if twin_now is not twin_stage:
                twin_stage = twin_now
                live.console.print(f"  call {i:>2}  DryRun twin reaches {twin_stage.value} at "
                                   f"{_percent(state[1])}%: it enforces nothing, only counts", highlight=False)
            result.samples.append(Sample(time.monotonic() - began, pct, _percent(state[1]), stage))
            live.update(Group(_view(result, *state, i)))
            if pace_s:
                time.sleep(pace_s)
    out.print()
    would = ", ".join(f"{action} x{n}" for action, n in sorted(result.would_have.items()))
    out.print(f"  Enforce: {result.admitted} calls admitted ({result.downgraded} on gpt-4o-mini), {result.blocked} "
              f"refused.\n  DryRun twin: all {CALLS} admitted, now at {_percent(state[1])}% of its limit; it would "
              f"have done {would or 'nothing'} (x-tokenbudget-dry-run).", highlight=False)
    return result
