"""Admission across every budget that selects the pod: caps, allow lists, concurrency, the ladder, holds.

Order of checks for one call: a concurrency slot (bounded queue), per-request caps (reject or clamp),
the ladder of each budget (Block refuses, Downgrade rewrites the model, Throttle delays), then the
reservation in every window of every budget, all or nothing. In DryRun every decision is computed the
same way but only recorded, so a dry run reports what the enforced run would have done.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.tokenbudget import Action, OnOversize, UncappedOutput
from tokenbudget_api.usage import DRY_RUN_REFUSALS, Outcome, Usage, UsageRecord
from tokenbudget_api.windows import Clock
from tokenbudget_sidecar.amounts import Demand, Spend
from tokenbudget_sidecar.budget import BudgetState, Refused
from tokenbudget_sidecar.dialects import Call, Dialect
from tokenbudget_sidecar.holds import Reservation
from tokenbudget_sidecar.ladder import STAGE_ORDER
from tokenbudget_sidecar.pricing import PriceBook
from tokenbudget_sidecar.prompt_count import PromptCount
from tokenbudget_sidecar.refusal_reasons import at_block_stage, block_lifts_in
from tokenbudget_sidecar.windows import Window

GENERATIVE = frozenset({"chat", "responses", "completions", "messages", "generate"})  # operations that write output
# The field a call sets its output cap in, per (dialect, operation); "" is the dialect's default.
CAP_FIELDS = {("openai", ""): "max_completion_tokens", ("openai", "responses"): "max_output_tokens",
              ("openai", "completions"): "max_tokens", ("anthropic", ""): "max_tokens",
              ("gemini", ""): "generationConfig.maxOutputTokens"}


class Gate:
    """A concurrency cap with a bounded FIFO queue; a released slot passes straight to the next waiter."""

    def __init__(self, limit: int, queue: int, timeout_s: float) -> None:
        self.limit, self.queue, self.timeout_s = limit, queue, timeout_s
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1
            return
        if len(self.waiters) >= self.queue:
            raise Refused(429, f"tokenbudget: {self.in_flight} calls in flight (the limit) and {len(self.waiters)} "
                          "waiting (the queue is full)", retry_after=1)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.timeout_s)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return  # the slot arrived just as we gave up: keep it
            fut.cancel()
            self.waiters.remove(fut)
            raise Refused(429, f"tokenbudget: waited {self.timeout_s:g} s for one of {self.limit} concurrency "
                          "slots", retry_after=1) from None

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.cancelled():
                fut.set_result(None)  # the slot moves to the waiter; in_flight is unchanged
                return
        self.in_flight -= 1


@dataclass
class Ticket:
    """An admitted call's holds; settled exactly once."""

    holds: list[tuple[BudgetState, Reservation]] = field(default_factory=list)
    gate: Gate | None = None
    headers: dict[str, str] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)  # e.g. "ns/name:Downgrade", "ns/name:DryRun:Block"
    rewrote: bool = False  # the body or path changed (clamp, downgrade): re-serialize before forwarding
    settled: bool = False
    prompt: PromptCount | None = None  # set by the proxy: settlement counts it exactly if the record needs it


def dry_run_actions(ticket: Ticket, budget: str) -> set[str]:
    """What DryRun budget `budget` would have done to the call, each action once."""
    prefix = f"{budget}:DryRun:"
    return {d[len(prefix):] for d in ticket.decisions if d.startswith(prefix)}


class Admission:
    def __init__(self, policy: SidecarPolicy, clock: Clock, prices: PriceBook, default_output_tokens: int,
                 max_throttle_delay_s: float, reservation_ttl_s: float, prompt_margin_percent: int = 0) -> None:
        self.prompt_margin_percent = prompt_margin_percent
        self.clock = clock
        self.prices = prices
        self.default_output_tokens = default_output_tokens
        self.max_throttle_delay_s = max_throttle_delay_s
        self.ttl = dt.timedelta(seconds=reservation_ttl_s)
        self.budgets = [BudgetState(b, clock) for b in policy.budgets]
        caps = [b.spec.concurrency for b in policy.budgets if b.spec.concurrency]
        self.gate = Gate(min(c.max_in_flight for c in caps), min(c.max_queued for c in caps),
                         min(c.queue_timeout_seconds for c in caps)) if caps else None

    def adopt(self, old: Admission) -> list[BudgetState]:
        """Keep use, holds and ladder state across a policy push for limits whose shape did not change;
        returns the budgets new to this policy."""
        previous = {b.name: b for b in old.budgets}
        fresh = []
        for budget in self.budgets:
            if budget.name in previous:
                budget.adopt(previous[budget.name])
            else:
                fresh.append(budget)
        if self.gate is not None and old.gate is not None:
            self.gate.in_flight, self.gate.waiters = old.gate.in_flight, old.gate.waiters
        return fresh

    async def admit(self, dialect: Dialect, call: Call, body: dict[str, object], path: str,
                    prompt: PromptCount | int, base_url: str) -> tuple[Ticket, str]:
        """Admit or raise Refused; may rewrite body/path (clamp, downgrade). Returns the ticket and path."""
        ticket = Ticket()
        if not self.budgets:
            return ticket, path
        if isinstance(prompt, int):  # an exact count already (the CLI's simulation, tests)
            prompt = PromptCount.exactly(call.model, prompt)
        if self.gate is not None:
            await self.gate.acquire()
            ticket.gate = self.gate
        try:
            path = await self._admit(ticket, dialect, call, body, path, prompt, base_url)
        except BaseException:
            self.release(ticket)
            raise
        return ticket, path

    async def _admit(self, ticket: Ticket, dialect: Dialect, call: Call, body: dict[str, object], path: str,
                     prompt: PromptCount, base_url: str) -> str:
        caps = [b.spec.request.max_prompt_tokens for b in self.budgets if b.spec.request]
        if any(cap is not None and prompt.high > cap for cap in caps):
            await prompt.count()  # the cap lies within the bounds' reach: decide on the exact count
        for b in self.budgets:
            self._caps(b, ticket, dialect, call, body, prompt.value)
        await self._count_where_it_matters(call, prompt, base_url)
        for b in self.budgets:
            if b.dry_run and dry_run_actions(ticket, b.name) & DRY_RUN_REFUSALS:
                continue  # enforcement would have refused it already: nothing later would have happened
            now = self.clock.now()
            windows = b.windows_for(call.model, call.user)
            steps = b.active_steps(windows, now)
            actions = {s.action for s in steps}
            if Action.BLOCK in actions:
                await self._tighten(b, windows)  # its message gives the percent
                self._decide(b, ticket, Action.BLOCK, 429, at_block_stage(b.name, windows, now),
                             retry_after=block_lifts_in(windows, now))
                continue  # (DryRun: enforcement would not have downgraded or throttled a call it blocked)
            if Action.DOWNGRADE in actions:
                mapping: dict[str, str] = {}
                for s in steps:
                    mapping.update(s.model_map or {})
                target = mapping.get(call.model)
                if target and target != call.model:
                    if b.dry_run:
                        ticket.decisions.append(f"{b.name}:DryRun:Downgrade")
                    else:
                        ticket.headers["x-tokenbudget-downgraded"] = f"{call.model}->{target}"
                        ticket.decisions.append(f"{b.name}:Downgrade")
                        path = dialect.set_model(call, body, path, target)
                        ticket.rewrote = True
            if Action.THROTTLE in actions:
                rate = min(s.max_requests_per_minute or 1 for s in steps if s.action is Action.THROTTLE)
                if b.dry_run:
                    ticket.decisions.append(f"{b.name}:DryRun:Throttle")
                else:
                    pods = b.policy.pods or 1  # the budget's rate, split between the pods it selects
                    delay = b.throttle_delay(rate / pods)
                    if delay > self.max_throttle_delay_s:
                        share = f" ({pods} pods share it)" if pods > 1 else ""
                        raise Refused(429, f"tokenbudget: budget {b.name} is throttled to {rate} calls per minute"
                                      f"{share}", retry_after=delay)
                    ticket.decisions.append(f"{b.name}:Throttle")
                    if delay > 0:
                        await asyncio.sleep(delay)
        await self._count_where_it_matters(call, prompt, base_url)

        def demand_of(tokens: int) -> Demand:
            return self._demand(call, tokens, base_url)

        for b in self.budgets:  # no await from here on: the holds are taken atomically
            reservation = b.reserve(b.windows_for(call.model, call.user), demand_of(prompt.value), self.ttl,
                                    prompt, demand_of, refused=b.dry_run and bool(dry_run_actions(ticket, b.name)
                                                                                  & DRY_RUN_REFUSALS))
            ticket.holds.append((b, reservation))
            ticket.decisions += [f"{b.name}:DryRun:{a.value}" for a in reservation.decisions]
        ticket.headers["x-tokenbudget-reserved-tokens"] = str(self._hold_tokens(call, prompt.value))
        self._headers(ticket, call)
        return path

    async def _count_where_it_matters(self, call: Call, prompt: PromptCount, base_url: str) -> None:
        """Count exactly, off the event loop, what the coming decisions may depend on: this prompt when its
        bound does not fit a window, and the lazy holds of any window that is tight or whose ladder step they
        leave in doubt. The atomic section then finds every count it needs already made (budget.reserve
        would otherwise count on the loop)."""
        budgets = [(b, b.windows_for(call.model, call.user)) for b in self.budgets]
        if prompt.known and not any(w.lazy for _, windows in budgets for w in windows):
            return  # nothing is on a bound: no price lookup, no scan (the common case with exact counts)
        now = self.clock.now()
        high = self._demand(call, prompt.value, base_url)
        pending: list[PromptCount] = []
        for b, windows in budgets:
            for w in windows:
                amount = high.of(w.limit)
                tight = amount is not None and amount > w.room(now)
                if tight and not prompt.known:
                    pending.append(prompt)
                if tight or b.ladder.ambiguous(w, now):
                    pending += b.lazy_prompts(w)
        if pending:
            await asyncio.gather(*(p.count() for p in {id(p): p for p in pending}.values()))

    async def _tighten(self, b: BudgetState, windows: list[Window]) -> None:
        """Make the lazy holds in `windows` exact, counting off the event loop."""
        prompts = {id(p): p for w in windows for p in b.lazy_prompts(w)}
        if prompts:
            await asyncio.gather(*(p.count() for p in prompts.values()))
            for w in windows:
                b.tighten(w)

    def _caps(self, b: BudgetState, ticket: Ticket, dialect: Dialect, call: Call, body: dict[str, object],
              prompt_tokens: int) -> None:
        if not b.models_allowed(call.model):
            self._decide(b, ticket, Action.BLOCK, 403, f"tokenbudget: model {call.model} is not allowed by budget "
                         f"{b.name} (spec.models.allow)")
        caps = b.spec.request
        if caps is None:
            return
        if (caps.uncapped_output is UncappedOutput.REJECT and caps.max_output_tokens is None
                and call.output_cap is None and call.operation in GENERATIVE):
            field = CAP_FIELDS.get((dialect.name, call.operation), CAP_FIELDS.get((dialect.name, ""), "max_tokens"))
            self._decide(b, ticket, None, 400, f"tokenbudget: budget {b.name} requires an output cap on every "
                         f"call (spec.request.uncappedOutput: Reject): set {field}")
        if caps.max_prompt_tokens is not None and prompt_tokens > caps.max_prompt_tokens:
            self._decide(b, ticket, None, 400, f"tokenbudget: the prompt has {prompt_tokens} tokens (tiktoken "
                         f"count with message framing), above the {caps.max_prompt_tokens} allowed by budget {b.name}")
        cap = caps.max_output_tokens
        if call.operation not in GENERATIVE:  # embeddings, images, transcriptions: no output cap field to clamp
            return
        if cap is None or (call.output_cap is not None and call.output_cap <= cap):
            return
        if call.output_cap is not None and caps.on_oversize is OnOversize.REJECT:
            self._decide(b, ticket, None, 400, f"tokenbudget: the call asks for up to {call.output_cap} output "
                         f"tokens, above the {cap} allowed by budget {b.name}")
        elif b.dry_run:
            ticket.decisions.append(f"{b.name}:DryRun:Clamp")
        else:  # Clamp, or a call that set no cap at all: give it the budget's cap
            dialect.set_output_cap(call, body, cap)
            ticket.decisions.append(f"{b.name}:Clamp")
            ticket.rewrote = True

    def _decide(self, b: BudgetState, ticket: Ticket, action: Action | None, status: int, message: str,
                retry_after: float | None = None) -> None:
        """Refuse, or in DryRun only note that we would have."""
        if b.dry_run:
            ticket.decisions.append(f"{b.name}:DryRun:{'Reject' if action is None else action.value}")
            return
        raise Refused(status, message, retry_after)

    def _hold_tokens(self, call: Call, prompt_tokens: int) -> int:
        """The tokens a call holds: its prompt plus the margin, and its output cap (or the default allowance)."""
        output = call.output_cap if call.output_cap is not None else self.default_output_tokens
        return prompt_tokens + prompt_tokens * self.prompt_margin_percent // 100 + output

    def _demand(self, call: Call, prompt_tokens: int, base_url: str) -> Demand:
        output = call.output_cap if call.output_cap is not None else self.default_output_tokens
        tokens = self._hold_tokens(call, prompt_tokens)
        cost, _ = self.prices.cost(call.model, base_url, Usage(input_tokens=tokens - output, output_tokens=output))
        return Demand(tokens=tokens, cost_usd=cost)

    def _headers(self, ticket: Ticket, call: Call) -> None:
        now = self.clock.now()
        stages = [b.stage(b.windows_for(call.model, call.user)) for b in self.budgets]
        ticket.headers["x-tokenbudget-stage"] = max(stages, key=STAGE_ORDER.index).value
        remaining = []
        for b in self.budgets:
            for w in b.windows_for(call.model, call.user):
                remaining.append(f"{b.name}/{w.label}={w.budget_remaining(now)}")
        if remaining:
            ticket.headers["x-tokenbudget-remaining"] = ", ".join(remaining)
        dry = [d for d in ticket.decisions if ":DryRun:" in d]
        if dry:
            ticket.headers["x-tokenbudget-dry-run"] = ", ".join(dry)

    def settle(self, ticket: Ticket, record: UsageRecord) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        for b, reservation in ticket.holds:
            b.settle(reservation, record.usage.total_tokens, record.cost_usd, record.time,
                     dry_run_actions(ticket, b.name) if b.dry_run else ())
        ticket.holds = []
        record.budgets = [b.name for b in self.budgets]
        record.decisions = list(ticket.decisions)
        self.release(ticket)

    def release(self, ticket: Ticket) -> None:
        """Give back holds and the concurrency slot of a call that will not settle (refused, failed early)."""
        for b, reservation in ticket.holds:
            b.release(reservation)
        ticket.holds = []
        if ticket.gate is not None:
            ticket.gate.release()
            ticket.gate = None

    def replay(self, records: Iterable[UsageRecord], budgets: Iterable[BudgetState] | None = None) -> None:
        """Count settled `records` again in the windows of `budgets` (default: all) that they name.

        The same rule as settlement and the checkpoint (BudgetState.contributions); refused calls count nothing.
        """
        chosen = list(self.budgets if budgets is None else budgets)
        for rec in records:
            if rec.outcome is Outcome.REFUSED:
                continue
            spend, counted = Spend.of_record(rec), rec.counted_budgets()
            for b in chosen:
                if b.name in counted:
                    b.count(spend)

    def expire(self) -> int:
        return sum(b.expire() for b in self.budgets)


