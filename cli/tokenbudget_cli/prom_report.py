"""`report --prometheus-url`: chargeback over `--since/--until` from the spend counters in Prometheus.

Sources: per namespace, budget, model and user the operator's `tokenbudget_spend_*` counters (committed usage,
persisted, so they never reset on an operator restart); per pod the sidecars' own per-process counters
(`tokenbudget_tokens_total`, `tokenbudget_cost_usd_total`, `tokenbudget_requests_total`), since the operator's
counters have no pod label (pods churn; that would be a series per pod name forever).

Exact, not `increase()`: PromQL's increase() extrapolates to the range's ends and never counts a series' first
sample, so a budget's first calls (or a whole short range) would come out wrong. Instead each series is read
as a range query and its growth summed the way Prometheus treats counters: a drop is a reset and the new value
counts from zero. Each series starts from its last value at `--since` within the day before (a series absent
then, e.g. across an operator outage, does not count its history again); a series first seen later starts at
zero. The operator's counters are first reduced to their own labels (`max`), so the series continue across a
change of operator replica (leader) instead of starting afresh under another `instance`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from tokenbudget_cli.report import By, Row

SPEND_LABELS = "namespace, budget, gen_ai_request_model, user"
GROUP_LABEL = {By.NAMESPACE: "namespace", By.BUDGET: "budget", By.MODEL: "gen_ai_request_model", By.USER: "user"}
SPEND_QUERIES = {  # unit -> query whose series are summed per group
    "tokens": f"max by ({SPEND_LABELS}, gen_ai_token_type) (tokenbudget_spend_tokens_total)",
    "cost_usd": f"max by ({SPEND_LABELS}) (tokenbudget_spend_cost_usd_total)",
    "requests": f"max by ({SPEND_LABELS}) (tokenbudget_spend_calls_total)",
}
POD_QUERIES = {
    "tokens": 'tokenbudget_tokens_total{type=~"input|output"}',
    "cost_usd": "tokenbudget_cost_usd_total",
    "requests": 'tokenbudget_requests_total{outcome!="refused"}',
}
BASELINE_LOOKBACK = "1d"
MAX_POINTS = 10_000  # Prometheus refuses more than 11,000 points per series
NO_USER = "(budgets without a per-User limit)"
_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class PrometheusError(Exception):
    """Prometheus could not be asked, or refused the query."""


def parse_time(text: str | None, now: dt.datetime, default: dt.datetime) -> dt.datetime:
    """RFC 3339 (`2026-12-01T00:00:00Z`), a date (`2026-12-01`, UTC midnight) or an age (`7d`, `24h`, `30m`)."""
    if not text:
        return default
    if m := _RELATIVE.match(text):
        return now - dt.timedelta(seconds=int(m[1]) * _UNITS[m[2]])
    try:
        found = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PrometheusError(f"cannot read time {text!r}: give RFC 3339 (2026-12-01T00:00:00Z), a date "
                              "(2026-12-01) or an age (7d, 24h, 30m)") from None
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


class Prometheus:
    """The two calls of Prometheus' HTTP API this needs (GET /api/v1/query and /api/v1/query_range)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # the URL the user gave
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PrometheusError(f"{url}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"cannot ask Prometheus at {self.url}: {exc}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus refused {params.get('query')!r}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def instant(self, query: str, at: dt.datetime) -> list[dict[str, Any]]:
        return self._get("/api/v1/query", {"query": query, "time": f"{at.timestamp():.3f}"})

    def range(self, query: str, start: dt.datetime, end: dt.datetime, step_s: int) -> list[dict[str, Any]]:
        return self._get("/api/v1/query_range", {"query": query, "start": f"{start.timestamp():.3f}",
                                                 "end": f"{end.timestamp():.3f}", "step": f"{step_s}s"})


def _key(series: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    metric = series["metric"]
    return tuple(sorted((str(k), str(v)) for k, v in metric.items()))


def growth(baseline: Decimal | None, values: Iterable[Decimal]) -> Decimal:
    """What a counter added after `baseline` (None: the series is new, from 0), a drop being a reset."""
    total, last = Decimal(0), baseline if baseline is not None else Decimal(0)
    for v in values:
        total += v - last if v >= last else v
        last = v
    return total


def series_growth(prom: Prometheus, query: str, since: dt.datetime,
                  until: dt.datetime) -> dict[tuple[tuple[str, str], ...], Decimal]:
    """Per series of `query` (by its labels), its exact growth between `since` and `until`."""
    seconds = max((until - since).total_seconds(), 1.0)
    step = max(1, math.ceil(seconds / MAX_POINTS))
    baseline: dict[tuple[tuple[str, str], ...], Decimal] = {}
    # The value at `since`; for a series absent then (an outage), its last one in the day before.
    for q in (query, f"last_over_time(({query})[{BASELINE_LOOKBACK}:1m])"):
        for s in prom.instant(q, since):
            baseline.setdefault(_key(s), Decimal(str(s["value"][1])))
    points: dict[tuple[tuple[str, str], ...], dict[float, Decimal]] = {}
    for s in prom.range(query, since, until, step):
        points.setdefault(_key(s), {}).update({float(t): Decimal(str(v)) for t, v in s["values"]})
    for s in prom.instant(query, until):  # the range's last step may stop short of `until`
        t, v = s["value"]
        points.setdefault(_key(s), {})[float(t)] = Decimal(str(v))
    return {key: growth(baseline.get(key), [by_t[t] for t in sorted(by_t)]) for key, by_t in points.items()}


def rows(prom: Prometheus, by: By, since: dt.datetime, until: dt.datetime) -> list[Row]:
    """Spend per group between `since` and `until`; groups with nothing spent are left out."""
    queries = POD_QUERIES if by is By.POD else SPEND_QUERIES
    out: dict[str, Row] = {}
    for unit, query in queries.items():
        for key, amount in series_growth(prom, query, since, until).items():
            labels = dict(key)
            if by is By.POD:
                group = f"{labels.get('namespace', '')}/{labels.get('pod', labels.get('instance', ''))}"
            else:
                group = labels.get(GROUP_LABEL[by]) or NO_USER
            row = out.setdefault(group, Row(group))
            setattr(row, unit, (getattr(row, unit) or Decimal(0)) + amount)
    found = [r for r in out.values() if r.tokens or r.cost_usd or r.requests]
    return sorted(found, key=lambda r: (-(r.cost_usd or 0), -(r.tokens or 0), r.group))


def note(by: By, since: dt.datetime, until: dt.datetime) -> str:
    span = f"{since.isoformat(timespec='seconds')} to {until.isoformat(timespec='seconds')}"
    if by is By.POD:
        return (f"Source: Prometheus, the sidecars' own counters, {span} (what a sidecar counted after its last "
                "scrape before it died is missing).")
    note = f"Source: Prometheus, the operator's tokenbudget_spend_* counters, {span}."
    if by is By.NAMESPACE:
        note += " A call counted against two budgets counts twice in its namespace."
    return note


__all__ = ["Prometheus", "PrometheusError", "growth", "note", "parse_time", "rows", "series_growth"]
