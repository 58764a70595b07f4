"""`kubectl tokenbudget` against a real kube-apiserver: status and report read what status says.

The examples are applied as they are, and their status is patched through the status subresource with
figures an operator would write (the operator itself is tested elsewhere; here only the reading side is),
so every number the plugin prints is known. The plugin runs as a process, as kubectl would run it, with
`--kubeconfig`. `export` reads a real sidecar's admin API at the IP of its Pod object, with the token of
the namespace's Secret, and its trace replays through `simulate`.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from controlplane import ControlPlane, pod_address
from operator_harness import namespace
from sidecar_harness import app_in_thread, policy_for

from tokenbudget_sidecar.app import create_admin_app, create_app, create_state
from tokenbudget_sidecar.settings import Settings
from tokenbudget_testing.upstream.app import create_app as create_upstream
from tokenbudget_testing.upstream.app import serve_in_thread

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NS, NS_B = "tb-cli", "tb-cli-b"
NOW = "2026-12-06T04:00:00Z"
SIDECAR_IP = pod_address(31)  # this run's own loopback /24: never another run's sidecar


def cond(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": NOW}


# As the current operator writes it: remaining per window, and the selected pods without the sidecar counted
# (two named, though only one such pod exists here: the plugin shows what status says, it does not list pods).
SUPPORT_BOT = {
    "observedGeneration": 1, "stage": "Alert", "usedPercent": 78, "tightestWindow": "monthly-tokens",
    "windows": [
        {"name": "monthly-tokens", "unit": "Tokens", "used": "3900000", "limit": "5000000", "percent": 78,
         "remaining": "1100000", "resetsAt": "2026-12-31T23:00:00Z"},
        {"name": "daily-dollars", "unit": "USD", "used": "31.20", "limit": "40.00", "percent": 78,
         "remaining": "8.80", "resetsAt": "2026-12-06T23:00:00Z"},
        {"name": "burst", "unit": "Requests", "used": "12", "limit": "600", "percent": 2, "remaining": "588"},
    ],
    "topConsumers": [{"kind": "Pod", "name": "support-bot-7d9f", "tokens": 2100000, "costUSD": "18.90"},
                     {"kind": "Pod", "name": "support-bot-x2k4", "tokens": 1800000, "costUSD": "12.30"},
                     {"kind": "User", "name": "alice", "tokens": 900000, "costUSD": "7.10"}],
    "pods": {"selected": 3, "synced": 2, "withoutSidecar": 2, "withoutSidecarPods": ["support-bot-old",
                                                                                     "support-bot-older"]},
    "insights": {"since": "2026-12-05T05:00:00Z", "calls": 1200, "inputTokens": 3100000, "costUSD": "31.20",
                 "items": [{"name": "RepeatedContext", "percent": 64, "tokens": 1984000, "calls": 900,
                            "costUSD": "4.96"},
                           {"name": "Retry", "percent": 3, "costPercent": 2, "tokens": 51000, "calls": 36,
                            "costUSD": "0.62"},
                           {"name": "InputGrowth", "tokens": 410, "calls": 700}],
                 "inputGrowth": {"turns": 700, "p50Tokens": 120, "p95Tokens": 410},
                 "outcomes": {"accepted": 150, "costPerAcceptedUSD": "0.208", "tokensPerAccepted": 21000,
                              "unacceptedSpendPercent": 35},
                 "consumers": [{"kind": "Pod", "name": "support-bot-7d9f", "calls": 700, "repeatedPercent": 71,
                                "repeatedUSD": "3.10", "retryCalls": 30, "retryUSD": "0.50", "costUSD": "18.90"}]},
    "conditions": [cond("Ready", "True", "Enforcing", "enforcing on 2 of 3 pods"),
                   cond("Synced", "False", "PodsPending", "2 of 3 selected pods enforce generation 1"),
                   cond("LadderStage", "True", "Alert", "monthly-tokens at 78%")],
}
PER_USER = {
    "stage": "Normal", "usedPercent": 40, "tightestWindow": "per-user-daily",
    "windows": [
        {"name": "per-user-daily", "key": "bob", "unit": "Tokens", "used": "80000", "limit": "200000", "percent": 40},
        {"name": "per-model-hourly-dollars", "key": "gpt-4o", "unit": "USD", "used": "1.50", "limit": "5.00",
         "percent": 30},
        {"name": "per-model-hourly-dollars", "key": "gpt-4o-mini", "unit": "USD", "used": "0.25", "limit": "5.00",
         "percent": 5},
        {"name": "hourly-total", "unit": "Tokens", "used": "120000", "limit": "2000000", "percent": 6},
    ],
    "pods": {"selected": 1, "synced": 1},
}
# As an operator older than `remaining` and the without-sidecar count wrote it: the plugin works them out.
DRY_RUN = {
    "stage": "Block", "usedPercent": 100, "tightestWindow": "weekly-dollars",
    "windows": [{"name": "weekly-dollars", "unit": "USD", "used": "262.50", "limit": "250.00", "percent": 100}],
    "dryRun": [{"action": "Block", "count": 41, "tokens": 380000, "costUSD": "12.50"}],
    "insights": {"since": "2026-12-05T05:00:00Z", "calls": 90, "inputTokens": 800000, "costUSD": "262.50",
                 "items": [{"name": "CacheMiss", "percent": 80, "tokens": 500000, "calls": 60, "costUSD": "9.10"}]},
}
ASSISTANT = {
    "unclassifiedPercent": "3.10",
    "classes": [{"name": "autocomplete", "tier": "shallow", "budgetTokens": 2048, "samples": 240, "p50": 410,
                 "p95": 880, "p99": 1200, "truncationPercent": "0.00", "thinkingOnlyTruncations": 0,
                 "underUsePercent": "79.98", "recommendedBudgetTokens": 1280}],
    "conditions": [cond("UnderUsed", "True", "UnderUsed", "autocomplete uses 20% of its budget")],
}


def apply_example(kube: ControlPlane, file: str, ns: str, status: dict[str, Any]) -> str:
    doc = yaml.safe_load((EXAMPLES / file).read_text())
    doc["metadata"]["namespace"] = ns
    kube.kubectl("apply", "-f", "-", input=json.dumps(doc))
    plural = "tb" if doc["kind"] == "TokenBudget" else "tt"
    kube.kubectl("patch", plural, doc["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
                 "-p", json.dumps({"status": status}))
    return str(doc["metadata"]["name"])


@pytest.fixture(scope="module")
def cluster(kube: ControlPlane) -> ControlPlane:
    namespace(kube, NS, enabled=False, secret=True)
    namespace(kube, NS_B, enabled=False, secret=False)
    apply_example(kube, "tokenbudget-team.yaml", NS, SUPPORT_BOT)
    apply_example(kube, "tokenbudget-dryrun.yaml", NS, DRY_RUN)
    apply_example(kube, "thinktier.yaml", NS, ASSISTANT)
    apply_example(kube, "tokenbudget-per-user.yaml", NS_B, PER_USER)
    # Two pods support-bot selects: one injected, one created before the namespace opted in (no sidecar).
    for name, sidecar in (("support-bot-7d9f", True), ("support-bot-old", False)):
        pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                               "metadata": {"name": name, "namespace": NS, "labels": {"app": "support-bot"}},
                               "spec": {"containers": [{"name": "app", "image": "registry.example.com/bot:1"}]}}
        if sidecar:
            pod["spec"]["initContainers"] = [{"name": "tokenbudget-sidecar", "restartPolicy": "Always",
                                              "image": "ghcr.io/tokenbudget/tokenbudget:0.1.0"}]
        kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    return kube


def test_status_prints_each_window_with_remaining_and_the_tiers_classes(cluster: ControlPlane) -> None:
    out = cluster.plugin("status", "-n", NS)
    print(out)  # the sample in the report
    assert "TokenBudget tb-cli/support-bot  Enforce  stage Alert  78% of monthly-tokens  2/3 pods synced" in out
    assert "2 selected pod(s) run without the sidecar, unmetered: support-bot-old, support-bot-older (created" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["monthly-tokens"][1:8] == ["-", "Month", "Tokens", "3,900,000", "5,000,000", "1,100,000", "78%"]
    assert rows["daily-dollars"][4:7] == ["$31.20", "$40.00", "$8.80"]
    assert rows["burst"][1:3] == ["-", "5m"]
    assert rows["burst"][-1] == "rolling"
    assert rows["weekly-dollars"][-1] == "-"  # a calendar window whose status gave no resetsAt
    consumers = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith(("Pod ", "User "))}
    assert consumers["support-bot-7d9f"] == ["Pod", "support-bot-7d9f", "2,100,000", "$18.9000"]
    assert consumers["alice"] == ["User", "alice", "900,000", "$7.1000"]
    assert rows["Synced"][1:3] == ["False", "PodsPending"]
    assert "TokenBudget tb-cli/research-dryrun  DryRun  stage Block" in out
    assert rows["Block"][1:4] == ["41", "380,000", "$12.5000"]
    assert "ThinkTier tb-cli/assistant  default tier standard  3.10% unclassified" in out
    assert rows["autocomplete"][1:] == ["shallow", "2,048", "240", "410", "880", "1,200", "0.00", "79.98", "1,280"]
    assert "tb-cli-b" not in out  # -n: one namespace only
    assert "\x1b[" not in out  # piped: no colour


def test_status_json_is_the_same_figures_for_scripts(cluster: ControlPlane) -> None:
    doc = json.loads(cluster.plugin("status", "-A", "-o", "json"))
    budgets = {f"{b['namespace']}/{b['name']}": b for b in doc["budgets"]}
    assert set(budgets) >= {"tb-cli/support-bot", "tb-cli/research-dryrun", "tb-cli-b/chat-per-user"}
    monthly = budgets["tb-cli/support-bot"]["windows"][0]
    assert monthly == {"name": "monthly-tokens", "unit": "Tokens", "period": "Month", "used": "3900000",
                       "limit": "5000000", "remaining": "1100000", "percent": 78, "resetsAt": "2026-12-31T23:00:00Z"}
    assert budgets["tb-cli/research-dryrun"]["windows"][0]["remaining"] == "0"  # never negative
    assert budgets["tb-cli/support-bot"]["pods"]["withoutSidecar"] == 2
    assert budgets["tb-cli/support-bot"]["withoutSidecar"] == ["support-bot-old", "support-bot-older"]  # status's
    assert budgets["tb-cli/support-bot"]["withoutSidecarCount"] == 2
    assert budgets["tb-cli/research-dryrun"]["withoutSidecar"] == []  # an older status: the pods listed instead
    assert budgets["tb-cli/research-dryrun"]["withoutSidecarCount"] == 0
    tiers = {t["name"]: t for t in doc["thinkTiers"]}
    assert tiers["assistant"]["classes"][0]["recommendedBudgetTokens"] == 1280
    one = yaml.safe_load(cluster.plugin("status", "-n", NS_B, "chat-per-user", "-o", "yaml"))
    assert [b["name"] for b in one["budgets"]] == ["chat-per-user"]
    assert one["thinkTiers"] == []


def test_insights_ranks_waste_across_budgets_by_dollars_with_outcomes(cluster: ControlPlane) -> None:
    out = cluster.plugin("insights", "-A")
    print(out)  # the sample in the report
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("tb-cli/", "tb-cli-b/"))
            and len(line.split()) > 4 and line.split()[1] in ("CacheMiss", "RepeatedContext", "Retry", "InputGrowth")]
    assert [(r[0], r[1]) for r in rows] == [("tb-cli/research-dryrun", "CacheMiss"),
                                           ("tb-cli/support-bot", "RepeatedContext"),
                                           ("tb-cli/support-bot", "Retry"), ("tb-cli/support-bot", "InputGrowth")]
    assert rows[1][2:5] == ["64%", "$4.9600", "1,984,000"]
    assert "$0.2080 and 21,000 tokens per accepted outcome (150 accepted, 35% of spend never accepted)" in out
    assert "tb-cli/research-dryrun: 90 calls, $262.5000; per accepted outcome: no acceptance reported" in out
    assert "tb-cli-b/chat-per-user: no call measured in the last day" in out
    pod = next(line.split() for line in out.splitlines() if " support-bot-7d9f " in line)
    assert pod[1:] == ["Pod", "support-bot-7d9f", "700", "71%", "$3.1000", "30", "$0.5000", "$18.9000"]
    one = json.loads(cluster.plugin("insights", "-n", NS, "support-bot", "-o", "json"))
    assert [r["insight"] for r in one["rows"]] == ["RepeatedContext", "Retry", "InputGrowth"]
    assert one["budgets"][0]["outcomes"]["costPerAcceptedUSD"] == "0.208"
    done = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "insights", "-n", NS, "nope", "--kubeconfig",
                           str(cluster.kubeconfig)], capture_output=True, text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr.strip()) == (1, f"error: no TokenBudget named nope in namespace {NS}")


def test_report_by_budget_takes_each_budgets_longest_window_and_says_where_it_comes_from(
        cluster: ControlPlane) -> None:
    out = cluster.plugin("report", "-A", "--by", "budget")
    print(out)  # the sample in the report
    assert "Source: the current periods on TokenBudget status" in out
    csv_out = cluster.plugin("report", "-A", "--by", "budget", "--format", "csv").splitlines()
    assert csv_out[0] == "budget,tokens,costUSD,requests,windows"
    table = {line.split(",")[0]: line.split(",") for line in csv_out[1:]}
    # support-bot: monthly tokens, daily dollars, the 5-minute requests window (the longest of each unit)
    assert table["tb-cli/support-bot"][1:4] == ["3900000", "31.2000", "12"]
    assert table["tb-cli/research-dryrun"][1:4] == ["", "262.5000", ""]
    assert table["tb-cli-b/chat-per-user"][1:4] == ["120000", "", ""]  # per-key windows are not the total


def test_report_by_namespace_model_user_and_pod(cluster: ControlPlane) -> None:
    by_ns = json.loads(cluster.plugin("report", "-A", "--by", "namespace", "--format", "json"))
    assert by_ns["source"] == "status"
    ns_rows = {r["namespace"]: r for r in by_ns["rows"]}
    assert ns_rows[NS]["costUSD"] == "293.7000"  # 31.20 + 262.50
    assert ns_rows[NS_B]["tokens"] == "120000"
    one_ns = json.loads(cluster.plugin("report", "-n", NS, "--by", "namespace", "--format", "json"))["rows"]
    assert [(r["namespace"], r["tokens"], r["costUSD"], r["requests"]) for r in one_ns] == [
        (NS, "3900000", "293.7000", "12"), ("TOTAL", "3900000", "293.7000", "12")]
    models = {r["model"]: r for r in json.loads(cluster.plugin("report", "-A", "--by", "model", "--format",
                                                       "json"))["rows"]}
    assert models["gpt-4o"]["costUSD"] == "1.5000"
    assert models["gpt-4o-mini"]["costUSD"] == "0.2500"
    # Per namespace: with -A, budgets another module left on the shared control plane (tests/monitoring's
    # users) would add to alice's row.
    users = cluster.plugin("report", "-n", NS, "--by", "user", "--format", "markdown")
    assert "| alice | 900000 | 7.1000 |" in users
    assert "| bob | 80000 |" in cluster.plugin("report", "-n", NS_B, "--by", "user", "--format", "markdown")
    pods = cluster.plugin("report", "-n", NS, "--by", "pod")
    assert "support-bot-x2k4" in pods
    assert "TOTAL" in pods


def test_report_without_prometheus_refuses_a_history_range(cluster: ControlPlane) -> None:
    """(With Prometheus: tests/monitoring/test_prometheus.py.)"""
    done = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "report", "--since", "7d",
                           "--kubeconfig", str(cluster.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "give --prometheus-url" in done.stderr
    unreachable = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "report", "--prometheus-url",
                                  "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1
    assert "cannot ask Prometheus at http://127.0.0.1:9" in unreachable.stderr


def test_export_reads_a_pods_sidecar_and_its_trace_replays(cluster: ControlPlane, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("test-token")  # what operator_harness.namespace put in the Secret
    upstream_app = create_upstream()
    with serve_in_thread(app=upstream_app) as upstream_url:
        settings = Settings(data_port=0, admin_port=0, admin_token_file=token)
        state = create_state(settings, policy_for(upstream_url))
        with app_in_thread(lambda: [create_app(settings, state), create_admin_app(state)],
                           host=SIDECAR_IP) as (data, admin):
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chat-0", "namespace": NS},
                   "spec": {"containers": [{"name": "app", "image": "registry.example.com/chat:1"}]}}
            cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
            cluster.kubectl("patch", "pod", "chat-0", "-n", NS, "--subresource=status", "--type=merge", "-p",
                            json.dumps({"status": {"phase": "Running", "podIP": SIDECAR_IP,
                                                   "podIPs": [{"ip": SIDECAR_IP}]}}))
            client = openai.OpenAI(base_url=f"{data}/openai/v1", api_key="k", max_retries=0)
            for _ in range(5):
                client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                               extra_headers={"x-upstream-output-tokens": "50"})
            port = admin.rsplit(":", 1)[1]
            records = [json.loads(line) for line in
                       cluster.plugin("export", "chat-0", "-n", NS, "--admin-port", port).splitlines()]
    assert [r["model"] for r in records] == ["gpt-4o"] * 5
    assert [r["usage"]["output_tokens"] for r in records] == [50] * 5
    # The trace replays: a budget with room for three of these calls admits three.
    total = records[0]["usage"]["input_tokens"] + 50
    budget = {"apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget", "metadata": {"name": "b"},
              "spec": {"selector": {}, "limits": [{"name": "d", "period": "Day", "tokens": 3 * total + 10}]}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(budget))
    # Calls that ran seconds apart, on a day that may turn midnight: spread them inside one day.
    start = dt.datetime.fromisoformat(records[0]["time"]).replace(hour=12)
    (tmp_path / "t.jsonl").write_text("".join(
        json.dumps({**r, "time": (start + dt.timedelta(seconds=i)).isoformat(), "prompt_estimate": 0}) + "\n"
        for i, r in enumerate(records)))
    out = subprocess.run([sys.executable, "-m", "tokenbudget_cli", "simulate", "-f", str(tmp_path / "b.yaml"),
                          "--trace", str(tmp_path / "t.jsonl"), "-o", "json"], capture_output=True, text=True,
                         timeout=60, check=True)
    summary = json.loads(out.stdout)
    assert summary["admitted"]["calls"] == 3
    assert summary["refusedByReason"] == {"window exhausted": 2}
