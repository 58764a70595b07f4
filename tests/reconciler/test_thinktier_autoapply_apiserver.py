"""ThinkTier autoApply closing its loop inside the cluster, against a real kube-apiserver: the operator pushes
each class's recommended budget into the sidecar's policy step by step until it rests at the recommendation,
within the bounds the spec sets; the spec is read before and after and never changes; removing the flag
rolls the sidecar back to the declared tier.

Real processes, the stack of apiserver_stack.py: the operator (deploy/rbac.yaml's ServiceAccount), a sidecar
on its own loopback address with a Pod object, the test upstream. Calls go through the official anthropic
SDK, whose `thinking.budget_tokens` the sidecar writes, so the budget in force is read off what the
upstream received.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from apiserver_stack import apply, http, sidecar_stack, wait_for
from controlplane import ControlPlane, pod_address

from tokenbudget_api import names
from tokenbudget_api.sketch import LogHistogram
from tokenbudget_api.thinking_stats import recommend

NS = "tb-autoapply"
IP = pod_address(24)
NEEDS = [800, 850, 900, 950, 1000, 820]  # thinking tokens each round's calls need (P95 1000 -> 1280)
DECLARED = 8192


@pytest.fixture(scope="module")
def st(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, str]]:
    with sidecar_stack(kube, tmp_path_factory.mktemp("autoapply"), NS, {"think": IP}, {"app": "think"}) as stack:
        yield kube, stack.upstream


def thinktier(auto_apply: str) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.THINKTIER_KIND,
            "metadata": {"name": "reasoning", "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "think"}},
                     "tiers": [{"name": "deep", "budgetTokens": DECLARED}],
                     "classes": [{"name": "lookup", "tier": "deep", "match": {"headerValues": ["lookup"]}}],
                     "defaultTier": "deep",
                     "calibration": {"minSamples": len(NEEDS), "percentile": 95, "headroomPercent": 20,
                                     "autoApply": auto_apply, "minBudgetTokens": 1024, "maxStepPercent": 50,
                                     "stepInterval": "1s"}}}


def applied_in_sidecar() -> dict[str, int]:
    policy = http("GET", f"http://{IP}:{names.SIDECAR_ADMIN_PORT}/policy")
    tiers = policy.get("thinkTiers") or []
    return dict(tiers[0].get("appliedBudgets") or {}) if tiers else {}


def calls(upstream: str) -> list[int]:
    """One round of the class's calls; returns the thinking budget the upstream received for each."""
    http("DELETE", f"{upstream}/_upstream/served", token=None)
    client = anthropic.Anthropic(base_url=f"http://{IP}:{names.SIDECAR_DATA_PORT}/anthropic", api_key="sk-test",
                                 max_retries=0)
    for need in NEEDS:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=200,
                               messages=[{"role": "user", "content": "Which plan fits?"}],
                               extra_headers={names.CLASS_HEADER: "lookup", "x-upstream-reasoning-tokens": str(need),
                                              "x-upstream-output-tokens": "8"})
    served = http("GET", f"{upstream}/_upstream/served", token=None)
    return [int(r["request_body"]["thinking"]["budget_tokens"]) for r in served]


def get_tt(kube: ControlPlane) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kube.kubectl("get", "tt", "reasoning", "-n", NS, "-o", "json").stdout)
    return found


def test_auto_apply_converges_within_bounds_never_writes_spec_and_rolls_back(st: tuple[ControlPlane, str]) -> None:
    kube, upstream = st
    apply(kube, {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
                 "metadata": {"name": "route", "namespace": NS},
                 "spec": {"selector": {"matchLabels": {"app": "think"}}, "enforcement": "DryRun",
                          "limits": [{"name": "daily", "period": "Day", "tokens": 10_000_000}],
                          "upstreams": [{"name": "anthropic", "baseURL": upstream, "dialect": "Anthropic"}]}})
    apply(kube, thinktier("Enabled"))
    wait_for("the sidecar to hold the ThinkTier", lambda: http(
        "GET", f"http://{IP}:{names.SIDECAR_ADMIN_PORT}/policy").get("thinkTiers"), timeout=15)
    before = get_tt(kube)
    hist = LogHistogram()
    for need in NEEDS:
        hist.add(need)
    p95 = hist.quantile(0.95)
    assert p95 is not None
    target = recommend(p95, 20)

    seen: list[int] = []
    for _ in range(8):
        budgets = calls(upstream)
        assert len(set(budgets)) == 1, budgets  # one budget in force per round
        seen.append(budgets[0])
        if budgets[0] == target:
            break
        wait_for("the operator to move the class", lambda b=budgets[0]: (a := applied_in_sidecar().get(
            "lookup")) is not None and a != b, timeout=20)
    assert seen[0] == DECLARED
    assert seen[-1] == target, seen
    assert all(1024 <= b <= DECLARED for b in seen)
    assert all(b >= a // 2 for a, b in itertools.pairwise(seen))  # at most 50 % per step
    print(f"\nautoApply budgets in force, round by round: {seen} (recommendation {target})")

    def settled() -> dict[str, Any] | None:
        classes = {c["name"]: c for c in (get_tt(kube).get("status") or {}).get("classes") or []}
        lookup = classes.get("lookup") or {}
        return lookup if lookup.get("samples") == len(NEEDS) and lookup.get("budgetTokens") == target else None

    lookup = wait_for("status of the class under the applied budget", settled, timeout=20)
    assert (lookup["declaredBudgetTokens"], lookup["appliedBudgetTokens"]) == (DECLARED, target)
    assert lookup["appliedReason"] in ("AtRecommendation", "Applied")
    assert lookup["recommendedBudgetTokens"] == target
    after = get_tt(kube)
    conditions = {c["type"]: c for c in after["status"]["conditions"]}
    assert (conditions["AutoApplied"]["status"], conditions["AutoApplied"]["reason"]) == ("True", "AppliedInCluster")
    assert after["spec"] == before["spec"]  # never written: GitOps sees no drift
    assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1

    apply(kube, thinktier("Disabled"))  # the rollback is removing the flag
    wait_for("the sidecar back on the declared tier", lambda: applied_in_sidecar() == {} and http(
        "GET", f"http://{IP}:{names.SIDECAR_ADMIN_PORT}/policy")["thinkTiers"][0]["generation"] == 2, timeout=15)
    assert set(calls(upstream)) == {DECLARED}
    kube.kubectl("delete", "tt", "reasoning", "-n", NS)
