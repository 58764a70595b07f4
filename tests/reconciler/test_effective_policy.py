"""A pod's effective policy combines every TokenBudget and ThinkTier that selects it, by documented rules,
and its version changes exactly when what the sidecar must enforce (or where it came from) changes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from budget_helpers import run_call

from tokenbudget_api import names
from tokenbudget_api.policy import Lease, SidecarPolicy
from tokenbudget_api.thinktier import ThinkTierSpec
from tokenbudget_api.tokenbudget import FailMode, OnDisconnect, TokenBudgetSpec
from tokenbudget_api.windows import ManualClock
from tokenbudget_operator.reconciler.conditions import Reason
from tokenbudget_operator.reconciler.effective import effective_policy, resolve
from tokenbudget_operator.reconciler.views import BudgetView, PodView, TierView
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import Refused
from tokenbudget_sidecar.pricing import PriceBook

NS = "team-a"
KEY_DIR = "/var/run/secrets/tokenbudget/upstreams"
DEFAULTS: dict[str, tuple[str, str, str | None]] = {"openai": ("https://api.openai.com", "OpenAI", None),
            "anthropic": ("https://api.anthropic.com", "Anthropic", None),
            "gemini": ("https://generativelanguage.googleapis.com", "Gemini", None)}


def budget(name: str, spec: dict[str, Any] | None = None, *, ns: str = NS, gen: int = 1, uid: str = "") -> BudgetView:
    body = {"selector": {"matchLabels": {"app": "chat"}}, **(spec or {})}
    return BudgetView(namespace=ns, name=name, spec=TokenBudgetSpec.model_validate(body), uid=uid or f"uid-{name}",
                      generation=gen)


def tier(name: str, spec: dict[str, Any] | None = None, *, ns: str = NS, gen: int = 1) -> TierView:
    body = {
        "selector": {"matchLabels": {"app": "chat"}},
        "tiers": [{"name": "standard", "budgetTokens": 8192},
                  {"name": "deep", "budgetTokens": 32768},
                  {"name": "max", "budgetTokens": 128000, "authorization": "Required"}],
        "defaultTier": "standard",
        **(spec or {}),
    }
    return TierView(namespace=ns, name=name, spec=ThinkTierSpec.model_validate(body), uid=f"uid-{name}",
                    generation=gen)


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None, ns: str = NS) -> PodView:
    return PodView(namespace=ns, name="chat-0", uid="pod-uid", labels={"app": "chat"} if labels is None else labels,
                   annotations=annotations or {})


def upstream(name: str, url: str, dialect: str = "OpenAI", secret: tuple[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "baseURL": url, "dialect": dialect}
    if secret:
        out["apiKeySecretRef"] = {"name": secret[0], "key": secret[1]}
    return out


def price(model: str, i: str, o: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "inputPerMillion": i, "outputPerMillion": o, **extra}


@dataclass
class Row:
    """One row of the table: inputs, and only the parts of the outcome this row is about."""

    id: str
    pod: PodView
    budgets: list[BudgetView] = field(default_factory=list)
    tiers: list[TierView] = field(default_factory=list)
    budget_names: list[str] | None = None
    upstreams: dict[str, tuple[str, str, str | None]] | None = None
    prices: dict[str, dict[str, Any]] | None = None
    on_disconnect: OnDisconnect | None = None
    fail_mode: FailMode | None = None
    authorized: dict[str, list[str]] | None = None
    problems: list[str] = field(default_factory=list)


ROWS = [
    Row("no budget selects the pod: defaults, no budgets, Drain, Closed", pod(),
        budget_names=[], upstreams=DEFAULTS, on_disconnect=OnDisconnect.DRAIN, fail_mode=FailMode.CLOSED),
    Row("a budget whose matchLabels match applies", pod(), [budget("b1")], budget_names=["b1"], upstreams=DEFAULTS),
    Row("a budget whose selector does not match does not apply", pod({"app": "batch"}), [budget("b1")],
        budget_names=[]),
    Row("a budget in another namespace never applies, even if its selector matches", pod(),
        [budget("b1", ns="team-b")], budget_names=[]),
    Row("an empty selector selects every pod of its namespace", pod({}), [budget("all", {"selector": {}})],
        budget_names=["all"]),
    Row("matchExpressions: NotIn and Exists", pod({"app": "chat", "tier": "gold"}),
        [budget("in", {"selector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}),
         budget("out", {"selector": {"matchExpressions": [
             {"key": "tier", "operator": "NotIn", "values": ["gold"]}]}})],
        budget_names=["in"]),
    Row("overlapping budgets all apply, in name order", pod(), [budget("zeta"), budget("alpha")],
        budget_names=["alpha", "zeta"]),
    Row("an explicit upstream replaces the default of its name; a budget without upstreams keeps the others",
        pod(), [budget("a", {"upstreams": [upstream("openai", "https://proxy.corp/openai")]}), budget("b")],
        upstreams={**DEFAULTS, "openai": ("https://proxy.corp/openai", "OpenAI", None)}),
    Row("when every budget lists upstreams, only those are reachable", pod(),
        [budget("a", {"upstreams": [upstream("qwen", "https://dashscope.aliyuncs.com/compatible-mode")]}),
         budget("b", {"upstreams": [upstream("claude", "https://api.anthropic.com", "Anthropic")]})],
        upstreams={"qwen": ("https://dashscope.aliyuncs.com/compatible-mode", "OpenAI", None),
                   "claude": ("https://api.anthropic.com", "Anthropic", None)}),
    Row("one upstream name, two endpoints: the budget first by name wins and both are told", pod(),
        [budget("b", {"upstreams": [upstream("llm", "https://b.example", "Anthropic")]}),
         budget("a", {"upstreams": [upstream("llm", "https://a.example")]})],
        upstreams={"llm": ("https://a.example", "OpenAI", None)}, problems=[Reason.UPSTREAM_CONFLICT]),
    Row("the same upstream declared twice (trailing slash aside) is no conflict", pod(),
        [budget("a", {"upstreams": [upstream("llm", "https://x.example/")]}),
         budget("b", {"upstreams": [upstream("llm", "https://x.example")]})],
        upstreams={"llm": ("https://x.example/", "OpenAI", None)}),
    Row("an upstream key from a Secret becomes a file under the key directory", pod(),
        [budget("a", {"upstreams": [upstream("openai", "https://api.openai.com", secret=("openai-key", "token"))]})],
        upstreams={"openai": ("https://api.openai.com", "OpenAI", f"{KEY_DIR}/openai-key/token")}),
    Row("a price override in any budget applies", pod(),
        [budget("a", {"models": {"prices": [price("qwen-max", "1.6", "6.4")]}}), budget("b")],
        prices={"qwen-max": {"inputPerMillion": "1.6", "outputPerMillion": "6.4"}}),
    Row("conflicting overrides: the highest price, field by field, tiers included", pod(),
        [budget("a", {"models": {"prices": [price("m", "1", "8", cachedInputPerMillion="0.1",
                                                  tiers=[{"aboveInputTokens": 200000, "inputPerMillion": "2",
                                                          "outputPerMillion": "9"}])]}}),
         budget("b", {"models": {"prices": [price("m", "1.5", "6", tiers=[
             {"aboveInputTokens": 100000, "inputPerMillion": "3", "outputPerMillion": "7"}])]}})],
        prices={"m": {"inputPerMillion": "1.5", "outputPerMillion": "8", "cachedInputPerMillion": "1.5",
                      "tiers": [{"aboveInputTokens": 100000, "inputPerMillion": "3", "outputPerMillion": "8"},
                                {"aboveInputTokens": 200000, "inputPerMillion": "3", "outputPerMillion": "9"}]}},
        problems=[Reason.PRICE_CONFLICT, Reason.PRICE_CONFLICT]),
    Row("onDisconnect: Drain unless every budget says Cut", pod(),
        [budget("a", {"onDisconnect": "Cut"}), budget("b")], on_disconnect=OnDisconnect.DRAIN),
    Row("onDisconnect: Cut when every budget says Cut", pod(),
        [budget("a", {"onDisconnect": "Cut"}), budget("b", {"onDisconnect": "Cut"})], on_disconnect=OnDisconnect.CUT),
    Row("failMode: Closed if any budget says Closed", pod(),
        [budget("a", {"failMode": "Open"}), budget("b", {"failMode": "Closed"})], fail_mode=FailMode.CLOSED),
    Row("failMode: Open only when every budget says Open", pod(),
        [budget("a", {"failMode": "Open"}), budget("b", {"failMode": "Open"})], fail_mode=FailMode.OPEN),
    Row("the annotation authorizes only existing Required tiers; an unknown name is reported",
        pod(annotations={names.AUTHORIZED_TIERS_ANNOTATION: " max, deep,,bogus "}), tiers=[tier("tt")],
        authorized={"tt": ["max"]}, problems=[Reason.UNKNOWN_AUTHORIZED_TIER]),
    Row("without the annotation no Required tier is authorized", pod(), tiers=[tier("tt")], authorized={"tt": []}),
    Row("a ThinkTier that does not select the pod is not passed on", pod({"app": "batch"}), tiers=[tier("tt")],
        authorized={}),
    Row("two ThinkTiers selecting one pod are both passed on, and the overlap is reported",
        pod(annotations={names.AUTHORIZED_TIERS_ANNOTATION: "max"}), tiers=[tier("z"), tier("a")],
        authorized={"a": ["max"], "z": ["max"]},
        problems=[Reason.OVERLAPPING_THINK_TIERS, Reason.OVERLAPPING_THINK_TIERS]),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_effective_policy_table(row: Row) -> None:
    result = resolve(row.pod, row.budgets, row.tiers, KEY_DIR)
    policy = result.policy
    if row.budget_names is not None:
        assert [b.name for b in policy.budgets] == row.budget_names
        assert result.budgets == tuple(f"{NS}/{n}" for n in row.budget_names)
    if row.upstreams is not None:
        got = {u.name: (u.base_url, u.dialect.value, u.api_key_file) for u in policy.upstreams}
        assert got == row.upstreams
        assert [u.name for u in policy.upstreams] == sorted(got)
    if row.prices is not None:
        got_prices = {p.model: {k: v for k, v in p.wire().items() if k != "model"} for p in policy.prices}
        assert got_prices == row.prices
    if row.on_disconnect is not None:
        assert policy.on_disconnect is row.on_disconnect
    if row.fail_mode is not None:
        assert policy.fail_mode is row.fail_mode
    if row.authorized is not None:
        assert {t.name: t.authorized_tiers for t in policy.think_tiers} == row.authorized
    assert [p.reason for p in result.problems] == row.problems
    assert effective_policy(row.pod, row.budgets, row.tiers, KEY_DIR) == policy


def test_conflicts_name_the_budget_at_fault_and_the_winner() -> None:
    result = resolve(pod(), [budget("b", {"upstreams": [upstream("llm", "https://b.example")]}),
                             budget("a", {"upstreams": [upstream("llm", "https://a.example")]})], [], KEY_DIR)
    (problem,) = result.problems
    assert problem.source == f"{NS}/b"
    assert "https://a.example" in problem.message
    assert "first by name" in problem.message


def test_same_inputs_in_any_order_give_the_same_version() -> None:
    budgets = [budget("a", {"limits": [{"name": "d", "period": "Day", "tokens": 1000}]}), budget("b")]
    tiers = [tier("tt")]
    first = effective_policy(pod(), budgets, tiers, KEY_DIR)
    again = effective_policy(pod(), list(reversed(budgets)), tiers, KEY_DIR)
    assert first.version == again.version
    assert first.version.startswith("sha256-")
    assert first == again


def test_the_version_survives_the_wire_so_a_repeated_push_is_a_no_op() -> None:
    policy = effective_policy(pod(), [budget("a")], [tier("tt")], KEY_DIR)
    received = SidecarPolicy.model_validate(policy.model_dump(mode="json", by_alias=True))
    assert received.version == policy.version


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda: [budget("a", gen=2)], "a new generation"),
        (lambda: [budget("a", uid="recreated")], "a deleted and re-created budget"),
        (lambda: [budget("a", {"failMode": "Open"})], "different content"),
        (lambda: [budget("a"), budget("b", {"selector": {"matchLabels": {"app": "other"}}})], None),
    ],
    ids=["generation", "uid", "content", "non-matching-budget-added"],
)
def test_the_version_changes_with_generation_uid_or_content_only(change: Any, why: str | None) -> None:
    base = effective_policy(pod(), [budget("a")], [], KEY_DIR).version
    changed = effective_policy(pod(), change(), [], KEY_DIR).version
    assert (changed != base) == (why is not None)


def test_leases_are_carried_per_budget_and_change_the_version() -> None:
    start = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    lease = Lease(window="d", granted=Decimal(250), period_start=start, expires_at=start + dt.timedelta(minutes=1))
    budgets = [budget("a", {"limits": [{"name": "d", "period": "Day", "tokens": 1000}]}), budget("b")]
    plain = effective_policy(pod(), budgets, [], KEY_DIR)
    leased = effective_policy(pod(), budgets, [], KEY_DIR, leases={f"{NS}/a": [lease]})
    assert leased.budgets[0].leases == [lease]
    assert leased.budgets[1].leases is None
    assert plain.version != leased.version


def test_views_are_built_from_kopf_bodies() -> None:
    body = {"metadata": {"namespace": NS, "name": "a", "uid": "u1", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "chat"}}}}
    view = BudgetView.from_body(body)
    assert (view.key, view.uid, view.generation) == (f"{NS}/a", "u1", 3)
    p = PodView.from_body({"metadata": {"namespace": NS, "name": "p", "uid": "u2", "labels": {"app": "chat"},
                                        "annotations": {names.AUTHORIZED_TIERS_ANNOTATION: "max"}}})
    assert resolve(p, [view], [tier("tt")], KEY_DIR).policy.think_tiers[0].authorized_tiers == ["max"]
    t = TierView.from_body({"metadata": {"namespace": NS, "name": "tt"}, "spec": tier("x").spec.wire()})
    assert t.spec.default_tier == "standard"


async def test_overlapping_budgets_in_the_sidecar_the_strictest_cap_wins() -> None:
    """The documented overlap rule, end to end: the sidecar enforcing the merged policy stops at the tighter cap."""
    loose = budget("loose", {"limits": [{"name": "d", "period": "Day", "tokens": 10_000}]})
    tight = budget("tight", {"limits": [{"name": "d", "period": "Day", "tokens": 450}]})
    policy = effective_policy(pod(), [loose, tight], [], KEY_DIR)
    clock = ManualClock(dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC))
    adm = Admission(policy, clock, PriceBook(policy.prices), default_output_tokens=100, max_throttle_delay_s=30,
                    reservation_ttl_s=3600)
    admitted = 0
    for _ in range(20):
        try:
            await run_call(adm, clock, 50, 50)  # reserves 50 + 50 (cap), settles 100
        except Refused:
            break
        admitted += 100
    assert admitted == 400  # the fifth call would bring "tight" to 500 > 450; "loose" alone would admit 100


def test_a_model_the_spec_names_without_a_price_is_a_problem_on_the_budget() -> None:
    from tokenbudget_api.tokenbudget import TokenBudgetSpec
    from tokenbudget_operator.reconciler.effective import BudgetView
    from tokenbudget_operator.reconciler.spec_checks import spec_problems

    def view(limit: dict[str, object], models: dict[str, object] | None = None) -> BudgetView:
        spec = {"selector": {}, "limits": [{"name": "l", "period": "Day", **limit}],
                "ladder": [{"at": 85, "action": "Downgrade", "modelMap": {"gpt-4o": "qwen-flash"}}],
                "models": models or {"allow": ["gpt-4o", "gpt-5*"]}}
        return BudgetView("ns", "b", TokenBudgetSpec.model_validate(spec))

    (dollars,) = spec_problems(view({"costUSD": "10"}))
    assert dollars.reason == "ModelWithoutPrice"
    assert "qwen-flash" in dollars.message
    assert "gpt-4o" not in dollars.message  # the catalog prices it
    assert dollars.source == "ns/b"
    (tokens,) = spec_problems(view({"tokens": 1000}))
    assert tokens.reason == "UnknownModel"
    priced = {"allow": ["gpt-4o"], "prices": [{"model": "qwen-flash", "inputPerMillion": "0.05",
                                              "outputPerMillion": "0.4"}]}
    assert spec_problems(view({"costUSD": "10"}, priced)) == []


def test_the_pushed_upstream_names_its_key_secret_and_azure_deployments() -> None:
    """The sidecar names the Secret in its 502 when the key is missing, and prices Azure deployments."""
    b = budget("azure", {"upstreams": [{
        "name": "azure", "baseURL": "https://example.openai.azure.com", "dialect": "AzureOpenAI",
        "apiKeySecretRef": {"name": "azure-key", "key": "api-key"}, "deployments": {"prod-chat": "gpt-4o"}}]})
    (up,) = [u for u in effective_policy(pod(), [b], [], KEY_DIR).upstreams if u.name == "azure"]
    assert (up.api_key_file, up.api_key_secret) == (f"{KEY_DIR}/azure-key/api-key", "azure-key")
    assert up.deployments == {"prod-chat": "gpt-4o"}
    other = budget("other", {"upstreams": [{
        "name": "azure", "baseURL": "https://example.openai.azure.com", "dialect": "AzureOpenAI",
        "apiKeySecretRef": {"name": "azure-key", "key": "api-key"}, "deployments": {"prod-chat": "gpt-4o-mini"}}]})
    problems = resolve(pod(), [b, other], [], KEY_DIR).problems
    assert [p.reason for p in problems] == [Reason.UPSTREAM_CONFLICT], "another deployment map is another endpoint"


def test_a_throttling_budget_tells_each_pod_how_many_share_its_rate() -> None:
    """Issue 13 part 1: the budget's maxRequestsPerMinute is split between the pods it selects (terminating
    ones no longer call); budgets without a Throttle step carry no count, so scaling does not re-push them."""
    from tokenbudget_operator.reconciler.fleet import throttle_sharing
    from tokenbudget_operator.reconciler.indexes import PodEntry

    throttled = budget("throttled", {"ladder": [{"at": 80, "action": "Throttle", "maxRequestsPerMinute": 60}]})
    plain = budget("plain", {"ladder": [{"at": 95, "action": "Block"}]})
    chat = [PodEntry(PodView(namespace=NS, name=f"chat-{i}", uid=f"u{i}", labels={"app": "chat"}, annotations={}),
                     "10.0.0.1", terminating=i == 3) for i in range(4)]
    other = PodEntry(PodView(namespace=NS, name="web", uid="w", labels={"app": "web"}, annotations={}), None)
    sharing = throttle_sharing({NS: [throttled, plain]}, [*chat, other])
    assert sharing == {throttled.key: 3}
    policy = resolve(chat[0].view, [throttled, plain], [], KEY_DIR, sharing=sharing).policy
    assert {b.name: b.pods for b in policy.budgets} == {"throttled": 3, "plain": None}
