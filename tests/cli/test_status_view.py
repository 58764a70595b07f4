"""The plugin's status document: what status says wins; an older operator's status is completed by the plugin."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tokenbudget_api.tokenbudget import TokenBudget
from tokenbudget_cli.kube import PodFacts
from tokenbudget_cli.status_view import budget_line, needs_pods

PODS = [PodFacts("chat-old", {"app": "chat"}, has_sidecar=False), PodFacts("chat-a", {"app": "chat"}, True),
        PodFacts("db", {"app": "db"}, has_sidecar=False)]


def tb(window: dict[str, Any], pods: dict[str, Any]) -> TokenBudget:
    return TokenBudget.model_validate({
        "metadata": {"name": "b", "namespace": "team"},
        "spec": {"selector": {"matchLabels": {"app": "chat"}},
                 "limits": [{"name": "day", "period": "Day", "tokens": 1000}]},
        "status": {"windows": [{"name": "day", "unit": "Tokens", "used": "1200", "limit": "1000", "percent": 100,
                                **window}], "pods": pods}})


def test_remaining_and_the_pods_without_sidecar_come_from_status_when_it_has_them() -> None:
    current = tb({"remaining": "7"}, {"selected": 1, "synced": 1, "withoutSidecar": 12,
                                      "withoutSidecarPods": [f"chat-{i}" for i in range(10)]})
    assert not needs_pods(current)
    line = budget_line(current, PODS)  # the listing is not consulted: status is the operator's count
    assert line.windows[0].remaining == Decimal(7)  # status's figure, not one worked out from used and limit
    assert line.without_sidecar_count == 12
    assert line.without_sidecar == [f"chat-{i}" for i in range(10)]


def test_an_older_operators_status_is_completed_from_used_limit_and_the_pods_listed() -> None:
    older = tb({}, {"selected": 1, "synced": 1})
    assert needs_pods(older)
    line = budget_line(older, PODS)
    assert line.windows[0].remaining == Decimal(0)  # 1000 - 1200, never below zero
    assert (line.without_sidecar, line.without_sidecar_count) == (["chat-old"], 1)
    unlisted = budget_line(older, None)  # pods could not be listed
    assert (unlisted.without_sidecar, unlisted.without_sidecar_count) == (None, None)
