"""Waste insights end to end: the golden workload through the openai SDK and a real sidecar process, the
operator pulling its records into a TokenBudget's `status.insights` on a real kube-apiserver, a Waste
condition and Event when a threshold the budget sets is crossed, metrics, and no prompt text anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from apiserver_stack import Sidecar, apply, budget, condition, http, sidecar_stack, wait_for
from controlplane import ControlPlane, pod_address
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess

from tokenbudget_api import names

sys.path.insert(0, str(Path(__file__).parents[1] / "insights"))
from golden_workload import SECRET_WORDS, SYSTEM_TEXT, run

NS = "tb-insights"  # its own namespace and address: never another module's
IP = pod_address(26)


@dataclass
class Stack:
    kube: ControlPlane
    operator: OperatorProcess
    sidecar: Sidecar
    upstream: str


@pytest.fixture(scope="module")
def stack(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with sidecar_stack(kube, tmp_path_factory.mktemp("insights"), NS, {"chat": IP}, {"app": "chat"}) as st:
        yield Stack(kube, st.operator, st.sidecars[0], st.upstream)


def get_tb(kube: ControlPlane, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kube.kubectl("get", "tb", name, "-n", NS, "-o", "json").stdout)
    return found


def test_golden_workload_insights_reach_status_with_a_waste_condition_and_no_prompt_text(stack: Stack) -> None:
    kube, sidecar = stack.kube, stack.sidecar
    manifest = budget("waste", stack.upstream, NS, tokens=10_000_000)
    manifest["spec"]["selector"] = {"matchLabels": {"app": "chat"}}
    manifest["spec"]["models"] = {"prices": [{"model": "gpt-4o", "inputPerMillion": "2", "outputPerMillion": "8",
                                              "cachedInputPerMillion": "0.5"}]}
    manifest["spec"]["insights"] = {"thresholds": {"repeatedContextPercent": 60, "retryPercent": 50}}
    apply(kube, manifest)
    key = f"{NS}/waste"
    wait_for("the sidecar to enforce it", lambda: key in sidecar.budgets(), timeout=10)
    spec_before = get_tb(kube, "waste")["spec"]

    expected = run(sidecar.openai_url, f"http://{sidecar.ip}:{names.SIDECAR_DATA_PORT}")

    def measured() -> dict[str, Any] | None:
        insights = (get_tb(kube, "waste").get("status") or {}).get("insights") or {}
        return insights if insights.get("calls") == 7 and insights.get("outcomes") else None

    insights = wait_for("status.insights of 7 calls and 2 outcomes", measured, timeout=20)
    items = {i["name"]: i for i in insights["items"]}
    billed = [i for i in range(7) if i != 4]
    assert insights["inputTokens"] == sum(expected.prompt[i] for i in billed)
    assert items["RepeatedContext"]["tokens"] == sum(expected.repeated[i] for i in billed)
    assert items["CacheMiss"]["tokens"] == sum(expected.miss)
    assert items["Retry"]["calls"] == 1
    assert items["ToolOutput"]["tokens"] == expected.tool[5]
    assert insights["outcomes"]["accepted"] == 2
    assert insights["inputGrowth"]["turns"] == 3
    (pod,) = insights["consumers"]
    assert (pod["kind"], pod["name"], pod["calls"], pod["retryCalls"]) == ("Pod", "chat", 7, 1)
    print("\ngolden workload insights:", json.dumps(insights, indent=1))

    tb = get_tb(kube, "waste")
    waste = condition(tb, "Waste")
    assert waste["status"] == "True"
    assert waste["reason"] == "RepeatedContextAboveThreshold"
    assert tb["spec"] == spec_before

    def waste_event() -> dict[str, Any] | None:
        events = json.loads(kube.kubectl("get", "events", "-n", NS, "-o", "json",
                                         "--field-selector", "involvedObject.name=waste").stdout)["items"]
        return next((e for e in events if e["reason"] == "RepeatedContextAboveThreshold"), None)

    event = wait_for("a Waste event", waste_event, timeout=10)
    assert event["type"] == "Warning"
    samples = stack.operator.samples("tokenbudget_insight_percent")
    assert samples[(("budget", "waste"), ("insight", "RepeatedContext"), ("namespace", NS))] == \
        items["RepeatedContext"]["percent"]

    everything = [kube.kubectl("get", "tb", "waste", "-n", NS, "-o", "json").stdout, stack.operator._get("/metrics")[1],
                  json.dumps(http("GET", f"{sidecar.admin}/usage")), stack.operator.log_tail(10_000),
                  kube.kubectl("get", "configmap", "-n", OPERATOR_NAMESPACE, "-o", "json").stdout]
    for text in everything:
        for word in SECRET_WORDS:
            assert word not in text
        assert SYSTEM_TEXT[:40] not in text
    kube.kubectl("delete", "tb", "waste", "-n", NS)
