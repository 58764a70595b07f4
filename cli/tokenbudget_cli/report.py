"""`kubectl tokenbudget report`: spend grouped by namespace, budget, model, user or pod.

Without Prometheus the only figures in the cluster are the current periods on each TokenBudget's status,
so that is what this reports, and says so in the output: per budget, the longest whole window of each
unit (tokens, dollars, requests); per model and per user, the keys of per-Model / per-User windows (and
for users and pods, `status.topConsumers`, which lists only the largest). Overlapping budgets each count
the same call, so a namespace total over two budgets that select the same pods counts it twice.
Spend history over `--since/--until` comes from Prometheus instead (`--prometheus-url`, prom_report.py).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from rich.console import Console

from tokenbudget_api.tokenbudget import Limit, LimitKey, Period, TokenBudget, Unit
from tokenbudget_cli import console
from tokenbudget_cli.kube import name_of, namespace_of

PERIOD_SECONDS = {Period.MINUTE: 60, Period.HOUR: 3600, Period.DAY: 86_400, Period.WEEK: 604_800,
                  Period.MONTH: 2_678_400}
SOURCE_NOTE = ("Source: the current periods on TokenBudget status (no --prometheus-url), not a history: "
               "per budget the longest window of each unit; users and pods from status.topConsumers "
               "(the largest only) and per-User windows; models from per-Model windows.")


class By(StrEnum):
    NAMESPACE = "namespace"
    BUDGET = "budget"
    MODEL = "model"
    USER = "user"
    POD = "pod"


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    MARKDOWN = "markdown"


@dataclass
class Row:
    """One group's spend; a unit no window measured stays None (unknown, not zero)."""

    group: str
    tokens: Decimal | None = None
    cost_usd: Decimal | None = None
    requests: Decimal | None = None
    windows: set[str] = field(default_factory=set)

    def add(self, unit: Unit, amount: Decimal, window: str) -> None:
        attr = {Unit.TOKENS: "tokens", Unit.USD: "cost_usd", Unit.REQUESTS: "requests"}[unit]
        setattr(self, attr, (getattr(self, attr) or Decimal(0)) + amount)
        self.windows.add(window)


def span_seconds(limit: Limit) -> int:
    """How long a window is, to pick each budget's longest."""
    if limit.period is not None:
        return PERIOD_SECONDS[limit.period]
    return limit.rolling_seconds or 0


def rows(budgets: Iterable[TokenBudget], by: By) -> list[Row]:
    out: dict[str, Row] = {}

    def row(group: str) -> Row:
        return out.setdefault(group, Row(group))

    for tb in budgets:
        status, label = tb.status, f"{namespace_of(tb)}/{name_of(tb)}"
        if status is None:
            continue
        limits = {lim.name: lim for lim in tb.spec.limits or []}
        windows = [w for w in status.windows or [] if w.name in limits]
        if by in (By.NAMESPACE, By.BUDGET):
            group = namespace_of(tb) if by is By.NAMESPACE else label
            longest: dict[Unit, tuple[int, str, Decimal]] = {}
            for w in windows:
                if w.key is None:
                    span = span_seconds(limits[w.name])
                    if w.unit not in longest or span > longest[w.unit][0]:
                        longest[w.unit] = (span, w.name, Decimal(w.used))
            for unit, (_, name, used) in longest.items():
                row(group).add(unit, used, f"{label}:{name}")
            row(group)
        elif by is By.MODEL:
            for w in windows:
                if w.key is not None and limits[w.name].per is LimitKey.MODEL:
                    row(w.key).add(w.unit, Decimal(w.used), f"{label}:{w.name}")
        else:
            kind = "User" if by is By.USER else "Pod"
            listed = set()
            for c in status.top_consumers or []:
                if c.kind == kind:
                    listed.add(c.name)
                    r = row(c.name)
                    r.add(Unit.TOKENS, Decimal(c.tokens), f"{label}:topConsumers")
                    r.add(Unit.USD, c.cost_usd, f"{label}:topConsumers")
            if by is By.USER:
                for w in windows:
                    if w.key is not None and limits[w.name].per is LimitKey.USER and w.key not in listed:
                        row(w.key).add(w.unit, Decimal(w.used), f"{label}:{w.name}")
    return sorted(out.values(), key=lambda r: (-(r.cost_usd or 0), -(r.tokens or 0), r.group))


def _cell(value: Decimal | None, unit: Unit) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if unit is Unit.USD else f"{value:.0f}"


def _records(found: list[Row], by: By) -> list[dict[str, str]]:
    total = Row("TOTAL")
    for r in found:
        for unit, value in ((Unit.TOKENS, r.tokens), (Unit.USD, r.cost_usd), (Unit.REQUESTS, r.requests)):
            if value is not None:
                total.add(unit, value, "")
    lines = [*found, total] if found else []
    return [{by.value: r.group, "tokens": _cell(r.tokens, Unit.TOKENS), "costUSD": _cell(r.cost_usd, Unit.USD),
             "requests": _cell(r.requests, Unit.REQUESTS), "windows": ", ".join(sorted(r.windows - {""}))}
            for r in lines]


def render(found: list[Row], by: By, fmt: Format, out: Console, *, source: str = "status",
           note: str = SOURCE_NOTE) -> None:
    """Rows as a table, CSV, JSON or Markdown; `source` "prometheus" (prom_report.py) has no windows column."""
    records = _records(found, by)
    columns = [by.value, "tokens", "costUSD", "requests"] + (["windows"] if source == "status" else [])
    if fmt is Format.JSON:
        out.print_json(json.dumps({"source": source, "note": note, "by": by.value,
                                   "rows": [{c: r[c] for c in columns} for r in records]}))
    elif fmt is Format.CSV:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        out.out(buf.getvalue(), end="", highlight=False)
    elif fmt is Format.MARKDOWN:
        lines = [f"_{note}_", "", "| " + " | ".join(columns) + " |",
                 "|" + "|".join("---:" if c in ("tokens", "costUSD", "requests") else "---" for c in columns) + "|"]
        lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in records]
        out.out("\n".join(lines), highlight=False)
    else:
        table = console.table(*(c.upper() for c in columns), caption=note, left=1)
        for r in records:
            table.add_row(*(r[c] for c in columns), style="bold" if r[by.value] == "TOTAL" else None)
        out.print(table)
