"""One budget window as a sidecar holds it: the counter of settled use, and what sits on top of it.

tokenbudget_api.windows counts what was spent in a period or a rolling span, the same way for the operator
and the sidecar. Only the sidecar has the rest, kept here beside the counter: the lease this pod admits
against, the holds of calls in flight, the ladder step the window stands on, and how much of those holds
rests on prompt bounds rather than exact counts. Two figures come out of them and must not be confused:
`room` (what this pod may still admit, against its grant) and `budget_used` / `percent` (what the whole
fleet has used of the limit, which the ladder and the headers speak of).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from tokenbudget_api.admin import LeaseReport, WindowReport
from tokenbudget_api.policy import Lease
from tokenbudget_api.tokenbudget import Limit, LimitKey
from tokenbudget_api.windows import RollingWindow, WindowCounter, limit_amount, percent_used
from tokenbudget_sidecar.amounts import unit_of

LEASE_LOW = Decimal("0.2")  # a lease with less than this share left asks the operator for more
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class Window:
    """One limit, or one key's share of a per-User/per-Model limit."""

    limit: Limit
    key: str | None
    counter: WindowCounter
    grants: tuple[Lease, ...] = ()  # its leases: this period's, and the next one's shortly before it starts
    reserved: Decimal = Decimal(0)
    step: int = -1  # index into the ladder in force for this window (hysteresis state)
    # Holds on a prompt's byte bound (prompt_count.py): reservation id -> how much the hold may exceed the
    # exact one (bound minus lower bound, in this window's unit). Decisions near them count exactly first.
    lazy: dict[int, Decimal] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.limit.name}[{self.key}]" if self.key else self.limit.name

    def lease(self, now: dt.datetime) -> Lease | None:
        """The grant in force at `now`: the latest one whose period has begun (else the earliest, stale)."""
        if len(self.grants) < 2:
            return self.grants[0] if self.grants else None
        begun = [g for g in self.grants if g.period_start is None or g.period_start <= now]
        if begun:
            return max(begun, key=lambda g: g.period_start or now)
        return min(self.grants, key=lambda g: g.period_start or now)

    def lease_holds(self, lease: Lease, amount: Decimal | None, now: dt.datetime) -> bool:
        """Whether the grant still decides: it is this period's, and it is current or still has room.

        An expired grant keeps admitting what it granted (the operator counts it as held until the pod
        reports a new one), so an operator or apiserver outage stops no call that grants already cover;
        failMode decides only once the grant is spent and was not renewed, or a period began without one.
        """
        if lease.period_start is not None and lease.period_start != self.counter.period_start(now):
            return False
        return lease.expires_at > now or (amount is not None and amount <= self.room(now))

    def amount(self, now: dt.datetime) -> Decimal:
        """The limit, or the lease granted for the period at `now`."""
        lease = self.lease(now)
        return Decimal(lease.granted) if lease is not None else limit_amount(self.limit)

    def used(self, now: dt.datetime) -> Decimal:
        return self.counter.used(now)

    def budget_used(self, now: dt.datetime) -> Decimal:
        """What the whole fleet has consumed in this window, as far as this pod knows: the fleet's figure at
        the last lease round plus what this pod consumed since (a per-key window: the key's, when the round
        listed it, `Lease.key_used`); its own use alone when no operator told it more (standalone, an unlisted
        key, a lease of another period).

        The ladder, `x-tokenbudget-remaining` and the report's percent all read this, so they speak of the
        budget (as `kubectl get tb` does), while admission still holds against this pod's grant (`room`).
        """
        own = self.used(now) + self.reserved
        lease = self.lease(now)
        if lease is None or (lease.period_start is not None and lease.period_start != self.counter.period_start(now)):
            return own
        if self.key is None and lease.fleet_used is not None:
            return max(lease.fleet_used - (lease.own_used or Decimal(0)), Decimal(0)) + own
        if self.key is not None and (figure := (lease.key_used or {}).get(self.key)) is not None:
            return max(figure.fleet - figure.own, Decimal(0)) + own
        return own

    def percent(self, now: dt.datetime) -> int:
        """The budget's percent used (fleet-wide when leased, see budget_used), not the grant's."""
        return percent_used(self.budget_used(now), limit_amount(self.limit))

    def percent_low(self, now: dt.datetime) -> int:
        """The percent if every lazy hold were at its prompt's lower bound: the exact one lies in between."""
        return percent_used(self.budget_used(now) - sum(self.lazy.values(), Decimal(0)), limit_amount(self.limit))

    def budget_remaining(self, now: dt.datetime) -> Decimal:
        return max(limit_amount(self.limit) - self.budget_used(now), Decimal(0))

    def room(self, now: dt.datetime) -> Decimal:
        return self.amount(now) - self.used(now) - self.reserved

    def history_clears_at(self, lost: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
        """When this window stops counting any instant before `lost`; None if it already has (or none is lost).

        Until then part of what it counts may be missing (the checkpoint was lost or unreadable), so the
        window cannot be checked: failMode Closed refuses in it, Open admits on what is known.
        """
        if lost is None or self.counter.period_start(now) > lost:
            return None
        counter = self.counter
        if isinstance(counter, RollingWindow):  # the lost instant's bucket leaves the window
            granularity = dt.timedelta(seconds=counter.granularity)
            bucket = _EPOCH + (lost - _EPOCH) // granularity * granularity
            return bucket + granularity + dt.timedelta(seconds=counter.seconds)
        return counter.resets_at(now)  # a calendar period: the next one starts after the loss

    def report(self, now: dt.datetime, keys: int | None = None) -> WindowReport:
        """This window as the operator reads it; `keys`: how many keys its limit has, when it stands for all."""
        lease = self.lease(now)
        room = self.room(now)
        return WindowReport(
            name=self.limit.name, key=self.key, unit=unit_of(self.limit), used=self.used(now),
            reserved=self.reserved, limit=self.amount(now), percent=self.percent(now),
            period_start=self.counter.period_start(now), resets_at=self.counter.resets_at(now),
            lease=None if lease is None else LeaseReport(
                granted=lease.granted, remaining=max(room, Decimal(0)),
                low=room < Decimal(lease.granted) * LEASE_LOW, expires_at=lease.expires_at),
            keys=keys,
        )


def key_for(limit: Limit, model: str, user: str | None) -> str | None:
    """The window key of a call in `limit`: its user or model for a per-key limit, else None."""
    if limit.per is LimitKey.USER:
        return user or "anonymous"
    if limit.per is LimitKey.MODEL:
        return model
    return None


def fullest_keys(windows: list[Window], now: dt.datetime) -> tuple[list[Window], dict[str, int]]:
    """Whole windows, and of each per-key limit the key with the most used + reserved; keys per limit."""
    out: list[Window] = []
    fullest: dict[str, Window] = {}
    counts: dict[str, int] = {}
    for w in windows:
        if w.key is None:
            out.append(w)
            continue
        counts[w.limit.name] = counts.get(w.limit.name, 0) + 1
        top = fullest.get(w.limit.name)
        if top is None or w.used(now) + w.reserved > top.used(now) + top.reserved:
            fullest[w.limit.name] = w
    return out + list(fullest.values()), counts


__all__ = ["LEASE_LOW", "Window", "fullest_keys", "key_for"]
