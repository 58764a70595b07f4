"""Records a sidecar made before the operator's first push reached it count against the pod's budgets
(issue 13 part 3; the sidecar side is tests/sidecar/test_startup_gate.py)."""

from __future__ import annotations

from tokenbudget_api.usage import UsageRecord
from tokenbudget_operator.reconciler.usage_loop import attribute_unpushed


def test_the_operator_counts_unpushed_records_against_the_budgets_selecting_the_pod() -> None:
    base = {"request_id": "r", "time": "2026-12-06T10:00:00Z", "upstream": "openai", "dialect": "OpenAI",
            "operation": "chat", "model": "gpt-4o"}
    gap = UsageRecord.model_validate({**base, "awaiting_policy": True})
    named = UsageRecord.model_validate({**base, "budgets": ["team/other"]})
    plain = UsageRecord.model_validate(base)  # standalone, or an unmetered route: not ours to attribute
    out = attribute_unpushed([gap, named, plain], ["team/daily", "team/dry"])
    assert [r.budgets for r in out] == [["team/daily", "team/dry"], ["team/other"], []]
