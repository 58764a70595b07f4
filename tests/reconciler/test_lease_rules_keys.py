"""Which per-key fleet figures a lease carries (issue 13 part 1, per key; the sidecar side is
tests/sidecar/test_fleet_view.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from tokenbudget_api.policy import KeyUse, Lease
from tokenbudget_api.tokenbudget import LadderStep
from tokenbudget_operator.reconciler.lease_rules import MAX_KEYS_PER_LEASE, key_figures, stable

LADDER = [LadderStep.model_validate({"at": 50, "action": "Alert"}),
          LadderStep.model_validate({"at": 95, "action": "Block"})]
LIMIT = Decimal(1_000)


def test_keys_from_half_the_lowest_step_are_listed_with_the_fleets_and_this_pods_figures() -> None:
    usage = {"alice": {"p1": Decimal(300), "p2": Decimal(100)},  # 40 %: listed (≥ 25 %)
             "bob": {"p2": Decimal(250)},  # exactly 25 %: listed
             "carol": {"p1": Decimal(249)}}  # just below: its stage is Normal whoever counts it
    assert key_figures(usage, LIMIT, LADDER, "p1") == {"alice": KeyUse(fleet=Decimal(400), own=Decimal(300)),
                                                       "bob": KeyUse(fleet=Decimal(250), own=Decimal(0))}
    assert key_figures(usage, LIMIT, [], "p1") is None  # no ladder: no stage to speak of
    assert key_figures({"dave": {"p1": Decimal(1)}}, LIMIT, LADDER, "p1") is None


def test_at_most_the_fullest_keys_are_listed() -> None:
    usage = {f"user-{i:04d}": {"p1": Decimal(500 + i)} for i in range(MAX_KEYS_PER_LEASE + 50)}
    figures = key_figures(usage, LIMIT, LADDER, "p1")
    assert figures is not None
    assert len(figures) == MAX_KEYS_PER_LEASE
    assert min(figures) == f"user-{50:04d}"  # the 50 emptiest were left out


def test_a_lease_is_pushed_again_when_a_keys_percent_moves() -> None:
    now = dt.datetime(2026, 12, 6, 10, tzinfo=dt.UTC)
    base = Lease(window="day", granted=Decimal(100), expires_at=now + dt.timedelta(seconds=60),
                 key_used={"alice": KeyUse(fleet=Decimal(400), own=Decimal(0))})
    same = base.model_copy(update={"expires_at": now + dt.timedelta(seconds=61)})
    moved = same.model_copy(update={"key_used": {"alice": KeyUse(fleet=Decimal(420), own=Decimal(0))}})
    ttl = dt.timedelta(seconds=60)
    assert stable([base], same, now, ttl, LIMIT) is base  # only the expiry moved: keep the pushed one
    assert stable([base], moved, now, ttl, LIMIT) is moved  # alice's fleet figure moved two points
