"""Spend history in a real Prometheus: two operator replicas (real processes against the test kube-apiserver,
as the chart's ServiceAccount, one leader through the Lease) and two real sidecars, scraped every second by
Prometheus from Debian's package with the chart's alerting rules loaded. Calls go through the official openai
SDK to the test upstream, whose ledger is the truth the counters are checked against. The leader is stopped
twice (the standby takes over, the stopped one comes back as standby, then leads again): the counters must
carry on without a reset and without counting anything twice. Then every dashboard panel's query must return
data, `kubectl tokenbudget report --prometheus-url` must give the upstream's figures, and a stage change
must fire the stage alert.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from apiserver_stack import (
    RBAC,
    TOKEN,
    apply,
    budget,
    http,
    namespaces,
    sidecar_pod,
    start_sidecar,
    start_upstream,
)
from controlplane import ControlPlane, terminate
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess, service_account_kubeconfig
from prometheus_server import PrometheusServer, prometheus
from spend_stack import (
    FILES,
    NS,
    OPERATOR_SETTINGS,
    PODS,
    USERS,
    Stack,
    Truth,
    leader,
    scrape_configs,
    spend,
    team,
    truth,
    wait_for,
)

from tokenbudget_api import names
from tokenbudget_operator.injector import certs


@pytest.fixture(scope="module")
def stack(kube: ControlPlane, prometheus_bins: dict[str, Path],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("prometheus")
    token_file = workdir / "admin-token"
    token_file.write_text(TOKEN)
    procs: list[subprocess.Popen[bytes]] = []
    namespaces(kube, NS)
    kube.kubectl("delete", "lease", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    kube.kubectl("delete", "configmap", "tokenbudget-usage-state", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    tls_dir = workdir / "tls"
    certs.write_material(certs.generate(["127.0.0.1"]), tls_dir)
    kubeconfig = str(service_account_kubeconfig(kube, workdir, RBAC))
    operators = {name: OperatorProcess(kube, workdir, f"operator-{name}", tls_dir=str(tls_dir), **OPERATOR_SETTINGS)
                 for name in ("a", "b")}
    for name, op in operators.items():
        op.env.update(KUBECONFIG=kubeconfig, HOSTNAME=f"operator-{name}")  # the Lease's holder identity
    try:
        upstream_proc, upstream = start_upstream(workdir, timeout=30)
        procs.append(upstream_proc)
        for pod, (ip, labels, _) in PODS.items():
            procs.append(start_sidecar(ip, workdir, token_file))
            wait_for(f"sidecar {pod}", lambda ip=ip: http("GET", f"http://{ip}:{names.SIDECAR_ADMIN_PORT}/healthz"))
            sidecar_pod(kube, NS, pod, ip, labels)
        operators["a"].start()
        wait_for("replica a to lead", lambda: leader(kube) == "a")
        operators["b"].start()
        for manifest in (team(upstream, 1_000_000),
                         budget("users", upstream, NS, selector={"tier": "users"}, tokens=100_000,
                                window={"period": "Day", "per": "User"}, limit_name="per-user")):
            apply(kube, manifest)

        def enforced() -> bool:
            """Each sidecar enforces its budgets, with a grant to spend in every leased window."""
            held = {pod: {f"{b['namespace']}/{b['name']}" for b in http(
                "GET", f"http://{ip}:{names.SIDECAR_ADMIN_PORT}/policy")["budgets"]
                if b.get("leases") and all(float(lease["granted"]) > 0 for lease in b["leases"])}
                for pod, (ip, _, _) in PODS.items()}
            return held == {"chat-a": {f"{NS}/team", f"{NS}/users"}, "chat-b": {f"{NS}/team"}}

        wait_for("both budgets enforced with leases", enforced)
        with prometheus(prometheus_bins["prometheus"], workdir, scrape_configs(operators),
                        [FILES / "prometheus-rules.yaml"]) as prom:
            wait_for("every target up", lambda: prom.value("sum(up)") == 4)
            yield Stack(kube, operators, prom, upstream, time.time(), procs)
    finally:
        for op in operators.values():
            op.stop()
        for proc in procs:
            terminate(proc, 3.0)
        kube.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)
        kube.kubectl("delete", "configmap", "tokenbudget-usage-state", "-n", OPERATOR_NAMESPACE,
                     "--ignore-not-found", check=False)
        kube.kubectl("delete", "lease", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found",
                     check=False)


def prom_tokens(prom: PrometheusServer, budget: str) -> float | None:
    return prom.value(f'sum(tokenbudget_spend_tokens_total{{budget="{budget}"}})')


def spend_and_wait(stack: Stack, calls_each: int, first: int) -> Truth:
    """Calls on both sidecars, then wait until Prometheus holds everything the upstream served."""
    spend(calls_each, first)
    served = truth(stack.served())
    wait_for("Prometheus to hold every call", lambda: all(
        prom_tokens(stack.prom, b) == served.tokens["budget"][b] for b in served.calls), timeout=30)
    return served


def hand_over(stack: Stack, old: str, new: str) -> None:
    """Stop leader `old` (SIGTERM: it releases the Lease); `new` must show the same counters; `old` comes back
    as a standby that shows none."""
    before = stack.operators[old].samples("tokenbudget_spend_tokens_total")
    assert before, f"the leader {old} shows no spend counters"
    assert not stack.operators[new].samples("tokenbudget_spend_tokens_total"), "a standby shows spend counters"
    began = time.monotonic()
    stack.operators[old].stop()
    after = wait_for(f"replica {new} to lead and show the counters",
                     lambda: stack.operators[new].samples("tokenbudget_spend_tokens_total"), timeout=30)
    took = time.monotonic() - began
    assert after == before, "the new leader must show the committed counters exactly as the old one did"
    assert leader(stack.kube) == new
    stack.operators[old].start()
    time.sleep(1.5)  # a few Lease rounds: it stays a standby, and shows nothing
    assert not stack.operators[old].samples("tokenbudget_spend_tokens_total")
    print(f"\nleader {old} stopped: replica {new} showed the same {len(after)} spend series {took:.1f} s later")


@pytest.fixture(scope="module")
def spent(stack: Stack) -> Truth:
    """Calls while a leads, while b leads, and while a leads again, each handed over by stopping the leader."""
    spend_and_wait(stack, 4, 0)
    hand_over(stack, "a", "b")
    spend_and_wait(stack, 4, 4)
    hand_over(stack, "b", "a")  # a was leader before: its own series resume, higher, after a gap
    everything = spend_and_wait(stack, 4, 8)
    time.sleep(2)  # two more scrapes: nothing may arrive late (a double count would show here)
    return everything


def test_the_counters_in_prometheus_are_what_the_upstream_served_across_leader_changes(
        stack: Stack, spent: Truth) -> None:
    prom = stack.prom
    for b, tokens in spent.tokens["budget"].items():
        assert prom_tokens(prom, b) == tokens
        assert prom.value(f'sum(tokenbudget_spend_calls_total{{budget="{b}"}})') == spent.calls[b]
    for kind in ("input", "output"):
        assert prom.value(f'sum(tokenbudget_spend_tokens_total{{gen_ai_token_type="{kind}"}})') == \
            spent.tokens["type"][kind]
    assert prom.value('sum(tokenbudget_spend_token_details_total{gen_ai_token_type="cached_input"})') == \
        spent.tokens["type"]["cached_input"] > 0
    for model, tokens in spent.tokens["model"].items():
        assert prom.value(f'sum(tokenbudget_spend_tokens_total{{gen_ai_request_model="{model}"}})') == tokens
    users = {r["metric"]["user"]: float(r["value"][1]) for r in prom.query(
        f'sum by (user) (tokenbudget_spend_tokens_total{{budget="{NS}/users"}})')}
    assert users == {u: spent.tokens["user"][u] for u in USERS}
    # Only the per-User budget has a user label.
    assert prom.query(f'tokenbudget_spend_calls_total{{budget="{NS}/team", user!=""}}') == []
    # Dollars: the sidecars' own counters (another path from the same prices) agree, and are not zero.
    dollars = prom.value(f'sum(tokenbudget_spend_cost_usd_total{{budget="{NS}/team"}})')
    sidecars = prom.value('sum(tokenbudget_cost_usd_total{job="tokenbudget-sidecar"})')
    assert dollars
    assert dollars == pytest.approx(sidecars, rel=1e-9)
    # No series ever went down: neither a replica's own (a's resumed after b's turn) nor the series as the
    # report reads it, across replicas. Both replicas showed them in turn; now only the leader, a, does.
    window = f"{int(time.time() - stack.began) + 5}s"
    assert prom.query(f"resets(tokenbudget_spend_tokens_total[{window}]) > 0") == []
    across = ("max by (namespace, budget, gen_ai_request_model, user, gen_ai_token_type) "
              "(tokenbudget_spend_tokens_total)")
    assert prom.query(f"resets(({across})[{window}:1s]) > 0") == []
    instances = {r["metric"]["instance"]
                 for r in prom.query(f"count_over_time(tokenbudget_spend_calls_total[{window}])")}
    assert instances == {f"127.0.0.1:{op.metrics_port}" for op in stack.operators.values()}
    assert {r["metric"]["instance"] for r in prom.query("tokenbudget_spend_calls_total")} == {
        f"127.0.0.1:{stack.operators['a'].metrics_port}"}


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_every_dashboard_panels_query_returns_data(stack: Stack, spent: Truth) -> None:
    """Grafana's variables as a user leaves them (All), and ranges that cover the calls."""
    elapsed = f"{int(time.time() - stack.began) + 5}s"
    empty = []
    for title, expr in panel_queries():
        query = (expr.replace("$__rate_interval", "15s").replace("$__range", elapsed)
                 .replace("$namespace", ".*").replace("$budget", ".*"))
        if not stack.prom.query(query):
            empty.append(title)
    assert not empty, f"panels without data: {empty}"
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    namespaces = stack.prom.api("/api/v1/label/namespace/values", **{"match[]": "tokenbudget_spend_calls_total"})
    budgets = stack.prom.api("/api/v1/label/budget/values",
                             **{"match[]": f'tokenbudget_spend_calls_total{{namespace=~"{NS}"}}'})
    assert "tokenbudget_spend_calls_total" in variables["namespace"]["definition"]
    assert namespaces == [NS]
    assert budgets == [f"{NS}/team", f"{NS}/users"]


def report(stack: Stack, by: str, fmt: str = "json") -> str:
    until = dt.datetime.now(dt.UTC).isoformat()
    since = dt.datetime.fromtimestamp(stack.began - 5, dt.UTC).isoformat()
    done = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "report", "--prometheus-url", stack.prom.url,
                           "--since", since, "--until", until, "--by", by, "--format", fmt],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("by", ["budget", "namespace", "model", "user", "pod"])
def test_report_gives_the_served_tokens_and_calls_per_group_with_dollars(
        stack: Stack, spent: Truth, by: str) -> None:
    doc = json.loads(report(stack, by))
    assert doc["source"] == "prometheus"
    rows = {r[by]: r for r in doc["rows"]}
    total = rows.pop("TOTAL")
    assert {g: int(r["tokens"]) for g, r in rows.items()} == spent.tokens[by]
    assert int(total["tokens"]) == sum(spent.tokens[by].values())
    assert all(Decimal(r["costUSD"]) > 0 for r in rows.values())
    if by == "budget":
        assert {g: int(r["requests"]) for g, r in rows.items()} == spent.calls
    if by == "pod":  # from the sidecars' counters: dollars equal the operator's for the budget every call hit
        team = json.loads(report(stack, "budget"))["rows"]
        team_usd = next(Decimal(r["costUSD"]) for r in team if r["budget"] == f"{NS}/team")
        assert abs(Decimal(total["costUSD"]) - team_usd) <= Decimal("0.0001")
    if by == "budget":
        print("\n" + report(stack, by, "table"))  # the sample in the report


def test_a_range_before_the_calls_reports_nothing(stack: Stack, spent: Truth) -> None:
    until = dt.datetime.fromtimestamp(stack.began - 1, dt.UTC).isoformat()
    done = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "report", "--prometheus-url", stack.prom.url,
                           "--since", "1h", "--until", until, "--by", "budget", "--format", "json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == []


def test_the_rules_evaluate_on_the_real_metrics_and_a_stage_change_fires_its_alert(
        stack: Stack, spent: Truth) -> None:
    groups = stack.prom.api("/api/v1/rules")["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert len(rules) == 7
    bad = {name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"}
    assert not bad, bad
    # Lower the team budget under ~85 % of what was spent: its ladder goes to Alert on the sidecars.
    used = spent.tokens["budget"][f"{NS}/team"]
    apply(stack.kube, team(stack.upstream, used * 100 // 85))

    def alerts() -> dict[str, dict[str, Any]] | None:
        found = {a["labels"]["alertname"]: a for a in stack.prom.api("/api/v1/alerts")["alerts"]}
        return found if "TokenBudgetStageChanged" in found and "TokenBudgetAbove80Percent" in found else None

    found = wait_for("the stage and 80 % alerts", alerts, timeout=90)  # push, scrape, eval: ~5 s, more when loaded
    changed = found["TokenBudgetStageChanged"]
    assert changed["state"] == "firing"
    assert changed["labels"]["budget"] == f"{NS}/team"
    assert float(changed["value"]) == 1.0  # Alert
    assert found["TokenBudgetAbove80Percent"]["state"] == "pending"  # for: 1m
    assert found["TokenBudgetAbove80Percent"]["labels"]["window"] == "daily"
