"""How `report --prometheus-url` reads counters: exact growth with Prometheus' reset rule, and its times.
(Against a real Prometheus: tests/monitoring/test_prometheus.py.)"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from tokenbudget_cli.prom_report import PrometheusError, growth, parse_time

D = Decimal
NOW = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(("baseline", "values", "expected"), [
    (D(100), [D(100), D(130), D(160)], D(60)),  # what it added after `since`
    (None, [D(40), D(90)], D(90)),  # a series first seen in the range counts from zero
    (D(100), [D(120), D(5), D(25)], D(45)),  # a drop is a reset: 20, then 5 from zero, then 20
    (D(500), [D(30)], D(30)),  # re-created after `since` (a budget deleted and made again): from zero
    (D(7), [], D(0)),
])
def test_growth_counts_what_a_counter_added_with_prometheus_reset_rule(
        baseline: Decimal | None, values: list[Decimal], expected: Decimal) -> None:
    assert growth(baseline, values) == expected


def test_times_are_rfc3339_dates_or_ages() -> None:
    default = NOW - dt.timedelta(days=1)
    assert parse_time(None, NOW, default) == default
    assert parse_time("7d", NOW, default) == NOW - dt.timedelta(days=7)
    assert parse_time("30m", NOW, default) == NOW - dt.timedelta(minutes=30)
    assert parse_time("2026-12-01T09:30:00Z", NOW, default) == dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC)
    assert parse_time("2026-12-01", NOW, default) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    with pytest.raises(PrometheusError, match="cannot read time 'last week'"):
        parse_time("last week", NOW, default)
