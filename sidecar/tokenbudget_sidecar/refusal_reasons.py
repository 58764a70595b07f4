"""Why a budget refuses a call: the words of its 429 (or 400) and the seconds of its Retry-After.

The SDKs back off by Retry-After on their own, so it names when the cause of this refusal clears (calls in
flight settling, the next lease round, a period's end), not a fixed pause; and the message names the
budget and limit, so whoever reads an application's log knows which knob to turn.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from tokenbudget_api.policy import Lease
from tokenbudget_sidecar.amounts import unit_of
from tokenbudget_sidecar.windows import Window

LEASE_ROUND_S = 2.0  # Retry-After when a new grant is what is missing: the operator's default lease interval
HOLDS_SETTLE_S = 1.0  # Retry-After when calls in flight hold the room: it comes back as they settle


def no_grant(budget: str, window: Window, lease: Lease, now: dt.datetime) -> str:
    where = f"tokenbudget: budget {budget} limit {window.label}"
    if lease.period_start is not None and lease.period_start != window.counter.period_start(now):
        return f"{where} has no lease for this period yet (failMode Closed)"
    return (f"{where}: this pod's lease of {lease.granted} is spent and expired at "
            f"{lease.expires_at.isoformat()} without renewal (failMode Closed)")


def history_unknown(budget: str, window: Window, lost: dt.datetime, clears: dt.datetime) -> str:
    return (f"tokenbudget: budget {budget} limit {window.label} cannot be checked: what this pod spent "
            f"before {lost.isoformat()} is unknown (its usage checkpoint was lost or unreadable), so with "
            f"failMode Closed it admits nothing in this window until {clears.isoformat()}")


def no_price(budget: str, window: Window) -> str:
    return (f"model has no price, so budget {budget} cannot check its dollar limit "
            f"{window.limit.name}; add it under spec.models.prices")


def exhausted(budget: str, window: Window, amount: Decimal, now: dt.datetime, awaits_grant: bool = False) -> str:
    """`awaits_grant`: the budget has room and this pod's grant has not (retry_after), so the message speaks
    of the grant and the next lease round, not of the period's end."""
    unit, room = unit_of(window.limit), max(window.room(now), Decimal(0))
    if awaits_grant:
        return (f"tokenbudget: budget {budget} limit {window.label}: this pod's grant has {room} {unit} left of "
                f"{window.amount(now)} and this call may need {amount}; the budget has "
                f"{window.budget_remaining(now)} left, which the operator's lease rounds share between its pods")
    resets = window.counter.resets_at(now)
    when = f"; it frees up at {resets.isoformat()}" if resets else ""
    return (f"tokenbudget: budget {budget} limit {window.label} has {room} "
            f"{unit} left of {window.amount(now)} and this call may need {amount}{when}")


def retry_after(window: Window, amount: Decimal, now: dt.datetime) -> tuple[float | None, bool]:
    """Seconds until the cause of a refusal for want of room clears, and whether that cause is a missing
    grant: calls in flight settling (their holds fill the room), the next lease round (the budget has
    room, this pod's grant has not), or the settled use ageing out (a period's end, a rolling bucket's
    expiry); None when waiting never helps."""
    if amount <= window.room(now) + window.reserved:
        return HOLDS_SETTLE_S, False
    lease = window.lease(now)
    if lease is not None and window.key is None and amount <= window.budget_remaining(now):
        return LEASE_ROUND_S, True
    fits = window.counter.available_at(amount, window.amount(now) - window.reserved, now)
    return (max((fits - now).total_seconds(), 1.0) if fits is not None else None), False


def at_block_stage(budget: str, windows: list[Window], now: dt.datetime) -> str:
    """The Block stage's refusal, naming the fullest of the call's windows."""
    w = max(windows, key=lambda w: w.percent(now))
    return f"tokenbudget: budget {budget} is at its Block stage (limit {w.label} at {w.percent(now)}%)"


def block_lifts_in(windows: list[Window], now: dt.datetime) -> float | None:
    """Seconds until the first of the call's windows that stand on a ladder step frees use (a period ends,
    a rolling window's oldest bucket ages out): the earliest the stage may come down; None if none will."""
    resets = [r for w in windows if w.step >= 0 and (r := w.counter.resets_at(now)) is not None]
    return max((min(resets) - now).total_seconds(), 1.0) if resets else None


__all__ = ["HOLDS_SETTLE_S", "LEASE_ROUND_S", "at_block_stage", "block_lifts_in", "exhausted", "history_unknown",
           "no_grant", "no_price", "retry_after"]
