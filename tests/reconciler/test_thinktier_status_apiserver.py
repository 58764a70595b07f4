"""The operator writing ThinkTier status from every selected sidecar's figures, merged per class.

Real processes, the stack of apiserver_stack.py: the operator running as the ServiceAccount of deploy/rbac.yaml,
two sidecars on their own loopback addresses (controlplane.pod_address) with a Pod object each, and the test
upstream. Reasoning calls go through the official openai SDK with the class
header and `x-upstream-reasoning-tokens`, so the thinking each call did is known exactly.

The first tests are pure: the tracker's handling of sidecar restarts, budget changes and departed pods.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from apiserver_stack import apply, http, sidecar_stack, wait_for
from controlplane import ControlPlane, pod_address
from openai import AsyncOpenAI
from operator_harness import OperatorProcess

from tokenbudget_api import names
from tokenbudget_api.admin import ThinkingAnswer
from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.thinking_stats import recommend
from tokenbudget_api.thinktier import ThinkTierStatus
from tokenbudget_operator.reconciler.thinktier_status import ThinkTierTracker, thinktier_status
from tokenbudget_operator.reconciler.views import TierView

NS = "tb-thinktier"
IPS = (pod_address(20), pod_address(21))
TIERS = [{"name": "shallow", "budgetTokens": 2048}, {"name": "standard", "budgetTokens": 8192}]
CLASSES = [{"name": "lookup", "tier": "shallow", "match": {"headerValues": ["lookup"]}},
           {"name": "support", "tier": "standard", "match": {"headerValues": ["support"]}}]


def tier_spec(min_samples: int = 5, auto_apply: str = "Disabled") -> dict[str, Any]:
    return {"selector": {"matchLabels": {"app": "think"}}, "tiers": TIERS, "classes": CLASSES,
            "defaultTier": "standard",
            "calibration": {"minSamples": min_samples, "percentile": 95, "headroomPercent": 20,
                            "autoApply": auto_apply}}


# ----- the tracker, without a cluster ----------------------------------------------------------------------


def report(calls: int, lookup: list[int], *, budget: int = 2048, truncations: int = 0) -> ThinkingAnswer:
    """A GET /thinking answer with one ThinkTier whose `lookup` class measured `lookup`."""
    hist = LogHistogram()
    for v in lookup:
        hist.add(v)
    klass = {"name": "lookup", "tier": "shallow", "budgetTokens": budget, "samples": len(lookup),
             "truncations": truncations, "thinkingOnlyTruncations": 0, "histogram": hist.wire()}
    return ThinkingAnswer.model_validate({"thinkTiers": [{
        "namespace": NS, "name": "reasoning", "generation": 1, "calls": calls, "unclassified": 0,
        "classes": [klass]}]})


def lookup_of(tracker: ThinkTierTracker, uids: list[str], budget: int = 2048) -> dict[str, Any]:
    spec = tier_spec()
    spec["tiers"] = [{"name": "shallow", "budgetTokens": budget}, TIERS[1]]
    view = TierView.from_body({"metadata": {"namespace": NS, "name": "reasoning", "generation": 1},
                               "spec": spec})
    status = thinktier_status(view, tracker.tracks(view.key, uids), previous=None, selected=len(uids),
                              synced=len(uids), problems=(), now=dt.datetime.now(dt.UTC))
    ThinkTierStatus.model_validate(status)  # the shape the CRD accepts
    found: dict[str, Any] = next(c for c in status["classes"] if c["name"] == "lookup")
    return found


def test_a_sidecar_restart_starts_a_new_series_and_keeps_the_old_one() -> None:
    tracker = ThinkTierTracker()
    tracker.observe("a", report(3, [100, 200, 300]))
    tracker.observe("a", report(4, [100, 200, 300, 400]))  # grew: the same series
    assert lookup_of(tracker, ["a"])["samples"] == 4
    tracker.observe("a", report(1, [900]))  # counts went down: restarted, a new series
    assert lookup_of(tracker, ["a"])["samples"] == 5
    tracker.observe("a", report(2, [900, 1000]))
    lookup = lookup_of(tracker, ["a"])
    assert (lookup["samples"], lookup["p99"]) == (6, pytest.approx(1000, rel=0.01))


def test_pods_merge_by_adding_histograms_and_a_departed_pod_is_dropped() -> None:
    tracker = ThinkTierTracker()
    tracker.observe("a", report(2, [100, 200]))
    tracker.observe("b", report(2, [300, 400], truncations=1))
    lookup = lookup_of(tracker, ["a", "b"])
    assert (lookup["samples"], lookup["truncationPercent"]) == (4, "25.00")
    assert lookup["p50"] == pytest.approx(200, rel=0.01)
    tracker.observe("b", ThinkingAnswer(think_tiers=[]))  # an empty answer (not re-pushed yet) keeps its figures
    assert lookup_of(tracker, ["a", "b"])["samples"] == 4
    tracker.retain({"a": [f"{NS}/reasoning"]})  # pod b deleted
    assert lookup_of(tracker, ["a", "b"])["samples"] == 2


def test_figures_under_another_budget_are_not_counted() -> None:
    tracker = ThinkTierTracker()
    tracker.observe("a", report(3, [100, 200, 300], budget=2048))
    tracker.observe("b", report(1, [300], budget=4096))  # b still runs the old generation
    assert lookup_of(tracker, ["a", "b"], budget=2048)["samples"] == 3
    assert lookup_of(tracker, ["a", "b"], budget=4096)["samples"] == 1
    tracker.observe("a", report(4, [500], budget=4096))  # a's class restarted under the new budget
    assert lookup_of(tracker, ["a", "b"], budget=4096)["samples"] == 2
    assert lookup_of(tracker, ["a", "b"], budget=2048)["samples"] == 0


# ----- against the apiserver -------------------------------------------------------------------------------


@dataclass
class ThinkStack:
    kube: ControlPlane
    operator: OperatorProcess
    upstream: str

    def openai_url(self, ip: str) -> str:
        return f"http://{ip}:{names.SIDECAR_DATA_PORT}/openai/v1"


@pytest.fixture(scope="module")
def think_stack(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThinkStack]:
    pods = dict(zip(("think-a", "think-b"), IPS, strict=True))
    with sidecar_stack(kube, tmp_path_factory.mktemp("thinktier"), NS, pods, {"app": "think"}) as st:
        yield ThinkStack(kube, st.operator, st.upstream)


def get_tt(kube: ControlPlane, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kube.kubectl("get", "tt", name, "-n", NS, "-o", "json").stdout)
    return found


def has_tier(ip: str, key: str) -> bool:
    policy = http("GET", f"http://{ip}:{names.SIDECAR_ADMIN_PORT}/policy")
    return any(f"{t['namespace']}/{t['name']}" == key for t in policy.get("thinkTiers") or [])


# (ip, class, reasoning tokens needed, max_completion_tokens): the calls the test makes
LOOKUP_A = [300, 400, 500, 600, 700, 800]
LOOKUP_B = [350, 450, 550, 650, 750, 850]
CALLS: list[tuple[str, str | None, int, int | None]] = [
    *((IPS[0], "lookup", r, None) for r in LOOKUP_A),
    *((IPS[1], "lookup", r, None) for r in LOOKUP_B),
    (IPS[0], "support", 1000, None), (IPS[0], "support", 1200, None),
    (IPS[0], "support", 5000, 200),  # thinks into the 200-token cap: an empty answer, truncated
    (IPS[1], "support", 1100, None), (IPS[1], "support", 1300, None), (IPS[1], "support", 1400, None),
    (IPS[0], None, 600, None),  # no class header: unclassified, default tier
]


def make_calls(st: ThinkStack) -> list[str]:
    """Every call in CALLS through the openai SDK; returns each call's finish_reason."""

    async def run() -> list[str]:
        clients = {ip: AsyncOpenAI(base_url=st.openai_url(ip), api_key="sk-test", max_retries=0) for ip in IPS}
        try:
            async def one(ip: str, klass: str | None, reasoning: int, cap: int | None) -> str:
                headers = {"x-upstream-reasoning-tokens": str(reasoning), "x-upstream-output-tokens": "8"}
                if klass is not None:
                    headers[names.CLASS_HEADER] = klass
                extra: dict[str, Any] = {"max_completion_tokens": cap} if cap is not None else {}
                done = await clients[ip].chat.completions.create(
                    model="o4-mini", messages=[{"role": "user", "content": "Which plan fits?"}],
                    extra_headers=headers, **extra)
                return str(done.choices[0].finish_reason)

            return list(await asyncio.gather(*(one(*c) for c in CALLS)))
        finally:
            for c in clients.values():
                await c.close()

    return asyncio.run(run())


def test_thinktier_status_merges_both_pods_figures_per_class(think_stack: ThinkStack) -> None:
    st, kube = think_stack, think_stack.kube
    key = f"{NS}/reasoning"
    # A DryRun budget routes the pods' openai traffic to the test upstream and blocks nothing.
    apply(kube, {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
                 "metadata": {"name": "route", "namespace": NS},
                 "spec": {"selector": {"matchLabels": {"app": "think"}}, "enforcement": "DryRun",
                          "limits": [{"name": "daily", "period": "Day", "tokens": 10_000_000}],
                          "upstreams": [{"name": "openai", "baseURL": st.upstream, "dialect": "OpenAI"}]}})
    apply(kube, {"apiVersion": names.API_VERSION, "kind": names.THINKTIER_KIND,
                 "metadata": {"name": "reasoning", "namespace": NS}, "spec": tier_spec()})
    wait_for("both sidecars to hold the ThinkTier", lambda: all(has_tier(ip, key) for ip in IPS), timeout=15)
    tt = wait_for("Ready with no samples yet", lambda: (t := get_tt(kube, "reasoning")).get("status", {}).get(
        "observedGeneration") == 1 and t, timeout=15)
    conditions = {c["type"]: c for c in tt["status"]["conditions"]}
    assert conditions["TruncationHigh"]["reason"] == "NotEnoughSamples"

    finishes = make_calls(st)
    assert finishes.count("length") == 1

    def settled() -> dict[str, Any] | None:
        status = get_tt(kube, "reasoning").get("status") or {}
        classes = {c["name"]: c for c in status.get("classes") or []}
        return status if classes.get("lookup", {}).get("samples") == 12 and classes.get(
            "support", {}).get("samples") == 6 and classes.get("unclassified", {}).get("samples") == 1 else None

    status = wait_for("status to count every call of both pods", settled, timeout=15)
    ThinkTierStatus.model_validate(status)
    classes = {c["name"]: c for c in status["classes"]}
    lookup, support, unclassified = classes["lookup"], classes["support"], classes["unclassified"]

    # Merged over both pods: 300..850 by 50, nearest rank (P50 = 6th of 12 = 550, P95 = P99 = 850).
    assert (lookup["tier"], lookup["budgetTokens"]) == ("shallow", 2048)
    assert lookup["p50"] == pytest.approx(550, rel=0.01)
    assert lookup["p95"] == pytest.approx(850, rel=0.01)
    assert lookup["p99"] == pytest.approx(850, rel=0.01)
    assert lookup["recommendedBudgetTokens"] == recommend(lookup["p95"], 20) == 1024
    assert (lookup["truncationPercent"], lookup["thinkingOnlyTruncations"]) == ("0.00", 0)
    assert lookup["underUsePercent"] == f"{(2048 - lookup['p50']) * 100 / 2048:.2f}"

    assert (support["tier"], support["budgetTokens"]) == ("standard", 8192)
    assert (support["truncationPercent"], support["thinkingOnlyTruncations"]) == ("16.67", 1)
    assert support["p50"] == pytest.approx(1100, rel=0.01)  # 200 (cut), 1000, 1100, 1200, 1300, 1400
    assert support["p99"] == pytest.approx(1400, rel=0.01)
    assert unclassified["p50"] == pytest.approx(600, rel=0.01)
    assert status["unclassifiedPercent"] == "5.26"  # 1 of 19 calls

    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Synced"]["status"]) == ("True", "True")
    assert "2/2 selected pods" in conditions["Synced"]["message"]
    assert conditions["TruncationHigh"]["status"] == "True"
    assert conditions["TruncationHigh"]["message"].startswith("support: 16.67% of calls truncated")
    assert conditions["UnderUsed"]["status"] == "True"
    assert "AutoApplied" not in conditions  # autoApply Disabled: recommendations are only reported
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])

    # Recommendation only: the spec is what was applied (same generation, same budgets).
    after = get_tt(kube, "reasoning")
    assert after["metadata"]["generation"] == 1
    assert [(t["name"], t["budgetTokens"]) for t in after["spec"]["tiers"]] == [
        (t["name"], t["budgetTokens"]) for t in TIERS]
    row = kube.kubectl("get", "tt", "reasoning", "-n", NS).stdout.splitlines()[1].split()
    assert row[1:4] == ["standard", "5.26", "True"]


def test_a_tier_above_a_budgets_output_cap_on_the_same_pods_is_a_condition(think_stack: ThinkStack) -> None:
    kube = think_stack.kube

    def ready() -> dict[str, Any]:
        conditions = (get_tt(kube, "reasoning").get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "Ready"), {})

    apply(kube, {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
                 "metadata": {"name": "caps", "namespace": NS},
                 "spec": {"selector": {"matchLabels": {"app": "think"}}, "request": {"maxOutputTokens": 4096},
                          "limits": [{"name": "daily", "period": "Day", "tokens": 10_000_000}]}})
    try:
        found = wait_for("Ready=False for the standard tier", lambda: (c := ready()).get("reason") == (
            "TierAboveOutputCap") and c, timeout=15)
        assert found["status"] == "False"
        assert "tier standard (8192 thinking tokens) is not below the output cap 4096" in found["message"]
        assert f"TokenBudget {NS}/caps" in found["message"]
        assert "tier shallow" not in found["message"]  # 2048 < 4096: honored
        header, row = (line.split() for line in kube.kubectl("get", "tt", "reasoning", "-n", NS).stdout.splitlines())
        assert dict(zip(header, row, strict=True))["READY"] == "False"  # the printer column
    finally:
        kube.kubectl("delete", "tb", "caps", "-n", NS, "--ignore-not-found")
    wait_for("Ready again without the cap", lambda: ready().get("status") == "True", timeout=15)


def test_the_operator_needed_no_permission_beyond_deploy_rbac(think_stack: ThinkStack) -> None:
    log = think_stack.operator.log_path.read_text(errors="replace")
    refused = [line for line in log.splitlines() if "forbidden" in line.lower()]
    assert not refused, "\n".join(refused[:5])
    assert "ThinkTier status round failed" not in log
