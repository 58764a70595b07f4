"""What a notification says: the Json payload (`tokenbudget_api.notifications.NotificationPayload`) and its
Slack rendering, built from what the status round observed. Pure: no I/O, no clock.

Idempotency keys are derived from the dedupe record alone (budget uid, target, the stage message's sequence
number and transition, or the summarized window and period start), so the operator that resends after a
crash, or another replica taking over, builds the very same key and a receiver can drop the repeat.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from tokenbudget_api.notifications import (
    BudgetRef,
    NotificationEvent,
    NotificationFormat,
    NotificationPayload,
    PeriodSummary,
    StageChange,
)
from tokenbudget_api.tokenbudget import Limit, Unit
from tokenbudget_api.windows import limit_amount, percent_used
from tokenbudget_operator.reconciler.usage_sums import Totals, fmt, unit_of
from tokenbudget_operator.reconciler.views import BudgetView

STAGE_EMOJI = {"Normal": ":white_check_mark:", "Alert": ":warning:", "Throttle": ":hourglass_flowing_sand:",
               "Downgrade": ":arrow_down:", "Block": ":no_entry:"}


def _ref(view: BudgetView) -> BudgetRef:
    return BudgetRef(namespace=view.namespace, name=view.name, uid=view.uid)


def stage_payload(view: BudgetView, target: str, *, sequence: int, previous: str, current: str,
                  window: str | None, used_percent: int | None, now: dt.datetime) -> NotificationPayload:
    """The `sequence`-th stage message to `target` (1 for the first): `previous` -> `current`."""
    where = f" (window {window} at {used_percent}%)" if window is not None and used_percent is not None else ""
    text = f"TokenBudget {view.key}: ladder stage {previous} -> {current}{where}"
    return NotificationPayload(
        idempotency_key=f"{view.uid}/{target}/stage/{sequence}/{previous}-{current}",
        event=NotificationEvent.STAGE_CHANGED, budget=_ref(view), target=target,
        enforcement=view.spec.enforcement.value, time=now, text=text,
        stage=StageChange(previous=previous, current=current, window=window, used_percent=used_percent),
    )


def amount(value: Decimal, unit: Unit) -> str:
    return dollars(value) if unit is Unit.USD else f"{value:,.0f} {unit.value.lower()}"


def dollars(value: Decimal) -> str:
    """Cents, or four places below a dollar, so a small test or a quiet day does not read $0.00."""
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def summary_payload(view: BudgetView, target: str, *, limit: Limit, start: dt.datetime, end: dt.datetime,
                    total: Totals, fullest: Totals, key: str | None, now: dt.datetime) -> NotificationPayload:
    """The end-of-period summary of calendar window `limit` for the period [start, end)."""
    unit, cap = unit_of(limit), limit_amount(limit)
    used = fullest.amount(limit)
    percent = percent_used(used, cap)
    of_key = f" ({key}, the fullest key)" if key is not None else ""
    text = (f"TokenBudget {view.key}: {limit.name} period {start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC ended "
            f"at {amount(used, unit)} of {amount(cap, unit)} ({percent}%){of_key}; "
            f"{total.tokens:,} tokens, {dollars(total.cost)} in {total.requests:,} calls")
    return NotificationPayload(
        idempotency_key=f"{view.uid}/{target}/period/{limit.name}/{start.isoformat()}",
        event=NotificationEvent.PERIOD_ENDED, budget=_ref(view), target=target,
        enforcement=view.spec.enforcement.value, time=now, text=text,
        summary=PeriodSummary(window=limit.name, key=key, unit=unit.value, period_start=start, period_end=end,
                              used=fmt(used), limit=fmt(cap), percent=percent, tokens=total.tokens,
                              cost_usd=total.cost, requests=total.requests),
    )


def body(payload: NotificationPayload, format_: NotificationFormat) -> dict[str, Any]:
    """The JSON body to POST: the payload itself (Json), or a Slack incoming-webhook message."""
    if format_ is NotificationFormat.JSON:
        return payload.wire()
    emoji = ""
    if payload.stage is not None:
        emoji = STAGE_EMOJI.get(payload.stage.current, "") + " "
    elif payload.summary is not None:
        emoji = ":bar_chart: "
    text = f"{emoji}{payload.text}"
    return {
        "text": text,  # the notification's fallback, and all a plain Slack-compatible receiver reads
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": (
                f"{payload.enforcement} · {payload.event.value} · idempotency key `{payload.idempotency_key}`")}]},
        ],
    }


__all__ = ["amount", "body", "dollars", "stage_payload", "summary_payload"]
