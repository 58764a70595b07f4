"""Lazy counting changes no decision (issue 19, part 1): generated workloads run through two admissions
side by side, one given every prompt counted exactly up front (as the sidecar always did), one given the
prompt as a range (prompt_count.py) that it counts only where a decision depends on it. Every admission's
outcome (admitted, or refused with the same status, message and Retry-After), its decisions (downgrade,
clamp, dry-run notes), the stage it reports and every alert must be the same.

Holds differ (the lazy side holds the byte bound until something needs more), which is the point: the
figures of how much are in benchmarks/sidecar_latency.py's lazy-count report and the README.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

from budget_helpers import OPENAI, record
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.windows import ManualClock
from tokenbudget_sidecar.admission import Admission, Ticket
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.dialects import Call
from tokenbudget_sidecar.pricing import PriceBook
from tokenbudget_sidecar.prompt_count import PromptCount
from tokenbudget_sidecar.tokens import TokenCounter

T0 = dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC)
WORDS = ["hello", "world", "budget", "token", "naïve", "日本語", "emoji🙂", "x" * 17, "a,b;c", "  ", "\n"]


@dataclass(frozen=True)
class Op:
    kind: str  # "call" or "settle" or "tick"
    text: str = ""
    cap: int | None = None
    model: str = "gpt-4o"
    user: str | None = None
    settle_index: int = 0
    out_tokens: int = 0


ops = st.one_of(
    st.builds(Op, kind=st.just("call"), text=st.lists(st.sampled_from(WORDS), min_size=1, max_size=60).map(" ".join),
              cap=st.one_of(st.none(), st.integers(1, 400)), model=st.sampled_from(["gpt-4o", "gpt-4o-mini"]),
              user=st.sampled_from([None, "alice", "bob"])),
    st.builds(Op, kind=st.just("settle"), settle_index=st.integers(0, 20), out_tokens=st.integers(0, 500)),
    st.builds(Op, kind=st.just("tick")),
)

limits = st.lists(st.one_of(
    st.builds(lambda n: {"name": "day", "period": "Day", "tokens": n}, st.integers(50, 8_000)),
    st.builds(lambda n: {"name": "per-user", "period": "Day", "tokens": n, "per": "User"}, st.integers(50, 4_000)),
    st.builds(lambda n: {"name": "dollars", "period": "Day", "costUSD": n}, st.sampled_from(["0.01", "0.05", "1"])),
), min_size=1, max_size=3, unique_by=lambda x: x["name"])

ladders = st.sampled_from([
    None,
    [{"at": 50, "action": "Alert"}, {"at": 95, "action": "Block"}],
    [{"at": 30, "action": "Alert"}, {"at": 60, "action": "Downgrade", "modelMap": {"gpt-4o": "gpt-4o-mini"}},
     {"at": 90, "action": "Block"}],
])

specs = st.builds(
    lambda lims, ladder, cap, dry: {
        "limits": lims, "timeZone": "UTC", **({"ladder": ladder} if ladder else {}),
        **({"request": {"maxPromptTokens": cap}} if cap else {}), **({"enforcement": "DryRun"} if dry else {}),
        "hysteresisPercent": 5},
    limits, ladders, st.one_of(st.none(), st.integers(5, 200)), st.booleans())


def make(spec: dict[str, Any], clock: ManualClock) -> Admission:
    policy = SidecarPolicy.model_validate({"budgets": [{"name": "b", "spec": {"selector": {}, **spec}}]})
    return Admission(policy, clock, PriceBook(policy.prices), default_output_tokens=300, max_throttle_delay_s=30,
                     reservation_ttl_s=3600, prompt_margin_percent=10)


def prompt_of(text: str, model: str, counter: TokenCounter) -> PromptCount:
    return PromptCount.of(counter, model, ["user", text], 2)


async def admit(adm: Admission, op: Op, prompt: PromptCount) -> tuple[Any, Ticket | None, Call]:
    body: dict[str, Any] = {"model": op.model, "messages": [{"role": "user", "content": op.text}]}
    if op.cap is not None:
        body["max_completion_tokens"] = op.cap
    call = Call("chat", op.model, user=op.user, output_cap=op.cap)
    try:
        ticket, _ = await adm.admit(OPENAI, call, body, "/v1/chat/completions", prompt, "https://api.openai.com")
    except Refused as refused:
        return ("refused", refused.status, refused.message, refused.retry_after), None, call
    return ("ok", tuple(ticket.decisions), ticket.headers.get("x-tokenbudget-stage"), call.model), ticket, call


async def run(spec: dict[str, Any], workload: list[Op]) -> tuple[int, int]:
    counter = TokenCounter(thread_threshold_bytes=1 << 30, hard_cap_bytes=1 << 30)
    clocks = ManualClock(T0), ManualClock(T0)
    exact, lazy = make(spec, clocks[0]), make(spec, clocks[1])
    open_tickets: list[tuple[Ticket, Call, Ticket, Call, int]] = []
    held = {"exact": 0, "lazy": 0}
    for op in workload:
        if op.kind == "tick":
            for c in clocks:
                c.advance(dt.timedelta(minutes=37))
            continue
        if op.kind == "settle":
            if open_tickets:
                te, ce, tl, cl, prompt_tokens = open_tickets.pop(op.settle_index % len(open_tickets))
                exact.settle(te, record(ce, prompt_tokens, op.out_tokens, clocks[0]))
                lazy.settle(tl, record(cl, prompt_tokens, op.out_tokens, clocks[1]))
            continue
        counted = prompt_of(op.text, op.model, counter)
        counted.count_now()  # always-exact: counted before admission, as the sidecar used to
        outcome_e, te_, ce = await admit(exact, op, counted)
        outcome_l, tl_, cl = await admit(lazy, op, prompt_of(op.text, op.model, counter))
        assert outcome_l == outcome_e, (op, outcome_e, outcome_l)
        event("refused" if outcome_e[0] == "refused" else "admitted")
        event("lazy hold" if tl_ is not None and not any(r.prompt is None for _, r in tl_.holds) else "exact hold")
        if te_ is not None and tl_ is not None:
            held["exact"] += int(te_.headers["x-tokenbudget-reserved-tokens"])
            held["lazy"] += int(tl_.headers["x-tokenbudget-reserved-tokens"])
            open_tickets.append((te_, ce, tl_, cl, counted.value))
        for be, bl in zip(exact.budgets, lazy.budgets, strict=True):
            assert [(a.window, a.stage) for a in be.alerts] == [(a.window, a.stage) for a in bl.alerts]
            assert be.would_have.keys() == bl.would_have.keys()
            assert {k: v.count for k, v in be.would_have.items()} == {k: v.count for k, v in bl.would_have.items()}
    return held["exact"], held["lazy"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, workload=st.lists(ops, min_size=5, max_size=60))
def test_lazy_counting_decides_as_always_exact_counting(spec: dict[str, Any], workload: list[Op]) -> None:
    asyncio.run(run(spec, workload))


def test_holds_are_larger_only_by_the_byte_bound_and_a_tight_window_is_exact() -> None:
    """A known case: a roomy window holds the bound; a window the bound does not fit gets the exact count."""
    text = "the quick brown fox jumps over the lazy dog " * 20  # 180 words, 900 bytes, 181 o200k tokens
    roomy = {"limits": [{"name": "day", "period": "Day", "tokens": 1_000_000}], "timeZone": "UTC"}
    tight = {"limits": [{"name": "day", "period": "Day", "tokens": 600}], "timeZone": "UTC"}
    counter = TokenCounter(1 << 30, 1 << 30)

    async def hold(spec: dict[str, Any]) -> tuple[int, bool]:
        prompt = prompt_of(text, "gpt-4o", counter)
        _, ticket, _ = await admit(make(spec, ManualClock(T0)), Op("call", text=text, cap=10), prompt)
        assert ticket is not None
        return int(ticket.headers["x-tokenbudget-reserved-tokens"]), prompt.known

    bound, counted_roomy = asyncio.run(hold(roomy))
    exact, counted_tight = asyncio.run(hold(tight))
    assert (counted_roomy, counted_tight) == (False, True)
    assert exact < 600 < bound  # the bound (about 915 + 10 %) would not have fit; the exact count does
