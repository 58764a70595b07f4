"""Replaying a trace through the sidecar's real admission code, on simulated time.

Each record becomes a call that starts at its `time` and lasts its `duration_ms`, admitted by
`tokenbudget_sidecar.admission.Admission` (the code a pod runs: caps, allow list, concurrency, the
ladder with its hysteresis, the holds in every window) on a ManualClock driven by a VirtualTimeLoop, so
Throttle delays and queue waits pass in simulated time and calls overlap as they did.

What a replay assumes, because a record does not keep it:
- The hold is the prompt as tiktoken counted it (`prompt_estimate`, else the provider's input tokens)
  plus the output the call produced, taken as its output cap (so a Reject cap refuses a call that
  produced more than it).
- A downgraded call would have used the same tokens on the cheaper model, priced by the policy's
  overrides or the catalog; a call that ran keeps the cost its record has.
- One sidecar held the whole budget (no leases): the fleet's total, as if one pod made every call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import yaml

from tokenbudget_api.policy import PUBLIC_ENDPOINTS, BudgetPolicy, SidecarPolicy
from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_api.tokenbudget import ModelPrice, Stage, TokenBudget
from tokenbudget_api.usage import Outcome, UsageRecord
from tokenbudget_api.windows import ManualClock
from tokenbudget_cli.virtual_loop import VirtualTimeLoop
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.dialects import DIALECTS, Call, Dialect
from tokenbudget_sidecar.ladder import STAGE_ORDER
from tokenbudget_sidecar.pricing import PriceBook
from tokenbudget_sidecar.settings import Settings

PROGRESS_EVERY = 256  # calls between progress updates: a redraw per call would cost more than the replay


class BudgetFileError(Exception):
    """A TokenBudget in the -f file does not validate."""


def load_budgets(path: Path) -> list[TokenBudget]:
    """Every TokenBudget in a (multi-document) YAML file; other kinds are skipped (none: an empty list)."""
    found = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(doc, dict) and doc.get("kind") == "TokenBudget":
            try:
                found.append(TokenBudget.model_validate(doc))
            except ValueError as exc:
                raise BudgetFileError(f"{path}: {exc}") from exc
    return found


def policy_of(budgets: list[TokenBudget]) -> SidecarPolicy:
    """The policy a pod selected by all of `budgets` would get (price overrides merged, first one wins)."""
    prices: dict[str, ModelPrice] = {}
    for tb in budgets:
        for price in (tb.spec.models.prices if tb.spec.models else None) or []:
            prices.setdefault(price.model, price)
    return SidecarPolicy(
        budgets=[BudgetPolicy(namespace=str(tb.metadata.get("namespace", "default")),
                              name=str(tb.metadata.get("name", f"budget-{i}")), generation=1, spec=tb.spec)
                 for i, tb in enumerate(budgets)],
        prices=list(prices.values()))


@dataclass
class CallFate:
    """What the budget did with one call of the trace."""

    record: UsageRecord
    start: dt.datetime
    model: str  # after a downgrade, the model it went to
    cost_usd: Decimal | None
    delay_s: float = 0.0
    refused_status: int | None = None
    refused_reason: str | None = None
    retry_after: float | None = None
    decisions: list[str] = field(default_factory=list)

    @property
    def admitted(self) -> bool:
        return self.refused_status is None

    @property
    def downgraded(self) -> bool:
        return self.model != self.record.model


@dataclass
class StageChange:
    at: dt.datetime
    budget: str
    stage: Stage
    percent: int
    window: str


@dataclass
class Sample:
    """A budget's fullest window after one call settled (for the spend-over-time picture)."""

    at: dt.datetime
    budget: str
    percent: int
    used: Decimal
    window: str


@dataclass
class Result:
    fates: list[CallFate] = field(default_factory=list)
    timeline: list[StageChange] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    would_have: dict[str, dict[str, tuple[int, int, Decimal]]] = field(default_factory=dict)
    dry_run: set[str] = field(default_factory=set)


def refusal_kind(exc: Refused) -> str:
    """A short name for why the sidecar refused, from the status it answers and its message."""
    if exc.status == 403:
        return "model not allowed"
    if exc.status == 400:
        return "per-request cap" if "allowed by budget" in exc.message else "unpriced model"
    if "Block stage" in exc.message:
        return "Block stage"
    if "throttled to" in exc.message:
        return "throttle wait too long"
    if "in flight" in exc.message or "concurrency" in exc.message:
        return "concurrency"
    if "lease" in exc.message or "cannot be checked" in exc.message:
        return "fail closed"
    return "window exhausted"


class Simulation:
    def __init__(self, budgets: list[TokenBudget], settings: Settings | None = None) -> None:
        self.policy = policy_of(budgets)
        self.settings = settings or Settings()
        self.prices = PriceBook(self.policy.prices)

    def run(self, records: list[UsageRecord], progress: Callable[[int], None] | None = None) -> Result:
        """Replay `records` (in time order); `progress(n)` as calls are started (every PROGRESS_EVERY, and last)."""
        result = Result()
        # Refused calls were never forwarded, and acceptance reports (operation "outcome") are no calls at all.
        calls = [r for r in records if r.outcome is not Outcome.REFUSED and r.operation != "outcome"]
        if not calls:
            return result
        clock = ManualClock(calls[0].time)
        loop = VirtualTimeLoop(clock)
        s = self.settings
        admission = Admission(self.policy, clock, self.prices, s.default_output_tokens, s.max_throttle_delay_s,
                              s.reservation_ttl_s, s.prompt_margin_percent)
        result.dry_run = {b.name for b in admission.budgets if b.dry_run}
        stages = {b.name: Stage.NORMAL for b in admission.budgets}

        def observe() -> None:
            now = clock.now()
            for b in admission.budgets:
                stage = b.stage()
                if not b.windows:
                    continue
                fullest = max(b.windows.values(), key=lambda w: w.percent(now))
                result.samples.append(Sample(now, b.name, fullest.percent(now), fullest.used(now), fullest.label))
                if stage is not stages[b.name]:
                    stages[b.name] = stage
                    result.timeline.append(StageChange(now, b.name, stage, fullest.percent(now), fullest.label))

        async def one(rec: UsageRecord) -> None:
            fate = await self._call(admission, rec, clock)
            result.fates.append(fate)
            observe()

        async def feed() -> None:
            tasks = []
            for i, rec in enumerate(calls):
                wait = loop.at(rec.time) - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                tasks.append(asyncio.create_task(one(rec)))
                if progress is not None and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == len(calls)):
                    progress(i + 1)
                if len(tasks) > 1000:
                    tasks = [t for t in tasks if not t.done()]
            await asyncio.gather(*tasks)

        try:
            loop.run_until_complete(feed())
        finally:
            loop.close()
        result.fates.sort(key=lambda f: (f.record.time, f.record.seq))
        for b in admission.budgets:
            result.would_have[b.name] = {k: (v.count, v.tokens, v.cost_usd) for k, v in b.would_have.items()}
        return result

    async def _call(self, admission: Admission, rec: UsageRecord, clock: ManualClock) -> CallFate:
        dialect = _dialect(rec.dialect)
        call = Call(operation=rec.operation, model=rec.model, stream=rec.stream, user=rec.user,
                    output_cap=max(rec.usage.output_tokens, 1))
        body: dict[str, object] = {"model": rec.model}
        path = f"/v1beta/models/{rec.model}:generateContent" if dialect.name == "gemini" else "/v1/chat"
        # A record whose estimate is the byte bound (no decision needed tiktoken's count) is replayed on the
        # provider's input figure instead, the nearer to what an exact count would have held.
        prompt = (rec.usage.input_tokens if rec.prompt_bound else rec.prompt_estimate) or rec.usage.input_tokens
        base_url = PUBLIC_ENDPOINTS[_dialect_name(rec.dialect)]
        arrived = clock.now()
        try:
            ticket, _ = await admission.admit(dialect, call, body, path, prompt, base_url)
        except Refused as exc:
            return CallFate(rec, arrived, rec.model, rec.cost_usd, (clock.now() - arrived).total_seconds(),
                            exc.status, refusal_kind(exc), exc.retry_after)
        start = clock.now()
        cost = rec.cost_usd
        if call.model != rec.model:
            cost, _ = self.prices.cost(call.model, base_url, rec.usage)
        settled = rec.model_copy(update={"time": start, "model": call.model, "cost_usd": cost})
        await asyncio.sleep(rec.duration_ms / 1000)
        admission.settle(ticket, settled)
        return CallFate(rec, start, call.model, cost, (start - arrived).total_seconds(),
                        decisions=list(ticket.decisions))


def _dialect_name(name: str) -> DialectName:
    for d in DialectName:
        if d.value.lower() == name.lower():
            return d
    return DialectName.OPENAI  # a compatible server: OpenAI's wire format


def _dialect(name: str) -> Dialect:
    return DIALECTS[_dialect_name(name)]


def stage_rank(stage: Stage) -> int:
    return STAGE_ORDER.index(stage)


__all__ = ["BudgetFileError", "CallFate", "Result", "Sample", "Simulation", "StageChange",
           "load_budgets", "policy_of", "refusal_kind", "stage_rank"]
