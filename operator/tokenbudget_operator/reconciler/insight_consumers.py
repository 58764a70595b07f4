"""Waste per pod and per user within a budget's insights: which workload re-sends the most context, retries
the most. A few sums per consumer and hour, at most `MAX_CONSUMERS` per hour (the rest pooled as "(other)"),
so a budget over thousands of users cannot grow the usage-state ConfigMap without bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from tokenbudget_api.usage import UsageRecord

ZERO = Decimal(0)
MAX_CONSUMERS = 50  # per budget and hour
OTHER = "(other)"
TOP = 5  # per kind in status


@dataclass
class Waste:
    calls: int = 0
    input_tokens: int = 0
    repeated_tokens: int = 0
    repeated_cost: Decimal = ZERO
    retry_calls: int = 0
    retry_cost: Decimal = ZERO
    cost: Decimal = ZERO

    def add(self, record: UsageRecord) -> None:
        f = record.features
        assert f is not None
        cost = record.cost_usd or ZERO
        self.calls += 1
        self.cost += cost
        if record.usage.total_tokens > 0:
            self.input_tokens += f.prompt_tokens
            self.repeated_tokens += f.repeated_tokens
            self.repeated_cost += f.repeated_usd or ZERO
        if f.retry > 0:
            self.retry_calls += 1
            self.retry_cost += cost

    def merge(self, other: Waste) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def wire(self) -> list[Any]:
        return [str(v) if isinstance(v, Decimal) else v for v in (getattr(self, f.name) for f in fields(self))]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Waste:
        w = cls()
        for f, value in zip(fields(w), raw, strict=True):
            setattr(w, f.name, Decimal(str(value)) if isinstance(getattr(w, f.name), Decimal) else int(value))
        return w


def add(consumers: dict[str, Waste], record: UsageRecord, pod: str | None) -> None:
    """Count `record` for its pod ("Pod:name") and, when it names one, its user ("User:name")."""
    for key in ([f"Pod:{pod}"] if pod else []) + ([f"User:{record.user}"] if record.user else []):
        if key not in consumers and len(consumers) >= MAX_CONSUMERS:
            key = f"{key.split(':', 1)[0]}:{OTHER}"
        consumers.setdefault(key, Waste()).add(record)


def merge(into: dict[str, Waste], other: Mapping[str, Waste]) -> None:
    for key, waste in other.items():
        into.setdefault(key, Waste()).merge(waste)


def top(consumers: Mapping[str, Waste]) -> list[dict[str, Any]]:
    """status.insights.consumers: per kind the `TOP` with the most repeated-context and retry dollars."""
    out: list[dict[str, Any]] = []
    for kind in ("Pod", "User"):
        rows = [(key.split(":", 1)[1], w) for key, w in consumers.items() if key.startswith(f"{kind}:")]
        rows.sort(key=lambda kw: (-(kw[1].repeated_cost + kw[1].retry_cost), -kw[1].cost, kw[0]))
        for name, w in rows[:TOP]:
            row: dict[str, Any] = {"kind": kind, "name": name, "calls": w.calls,
                                   "repeatedUSD": _fmt(w.repeated_cost), "retryCalls": w.retry_calls,
                                   "retryUSD": _fmt(w.retry_cost), "costUSD": _fmt(w.cost)}
            if w.input_tokens:
                row["repeatedPercent"] = min(w.repeated_tokens * 100 // w.input_tokens, 100)
            out.append(row)
    return out


def _fmt(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


__all__ = ["MAX_CONSUMERS", "Waste", "add", "merge", "top"]
