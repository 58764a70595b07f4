"""Build budgets and drive Admission directly, with a manual clock: no HTTP, no sleeping."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.usage import Usage, UsageRecord
from tokenbudget_api.windows import ManualClock
from tokenbudget_sidecar.admission import Admission, Ticket
from tokenbudget_sidecar.dialects import DIALECTS, Call
from tokenbudget_sidecar.pricing import PriceBook

OPENAI = DIALECTS[next(iter(DIALECTS))]


def admission(spec: dict[str, Any], clock: ManualClock, *, name: str = "b", leases: list[dict[str, Any]] | None = None,
              pods: int | None = None, **policy: Any) -> Admission:
    budget = {"name": name, "spec": {"selector": {}, **spec}, "leases": leases, "pods": pods}
    pol = SidecarPolicy.model_validate({"budgets": [budget], **policy})
    return Admission(pol, clock, PriceBook(pol.prices), default_output_tokens=100, max_throttle_delay_s=30,
                     reservation_ttl_s=3600)


def call(model: str = "gpt-4o", cap: int | None = 50, user: str | None = None) -> tuple[Call, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if cap is not None:
        body["max_completion_tokens"] = cap
    return Call("chat", model, user=user, output_cap=cap), body


def record(c: Call, tokens_in: int, tokens_out: int, clock: ManualClock, cost: str | None = "0") -> UsageRecord:
    from decimal import Decimal

    return UsageRecord(request_id="r", time=clock.now(), upstream="openai", dialect="openai", operation="chat",
                       model=c.model, user=c.user, usage=Usage(input_tokens=tokens_in, output_tokens=tokens_out),
                       cost_usd=None if cost is None else Decimal(cost))


async def run_call(adm: Admission, clock: ManualClock, prompt: int, out: int, **kw: Any) -> tuple[Ticket, Call]:
    c, body = call(**kw)
    ticket, _ = await adm.admit(OPENAI, c, body, "/v1/chat/completions", prompt, "http://127.0.0.1")
    adm.settle(ticket, record(c, prompt, out, clock))
    return ticket, c


def at(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso).astimezone(dt.UTC)
