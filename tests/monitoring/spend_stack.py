"""The parts of the spend-history test (test_prometheus.py): the processes it runs (test upstream, sidecars,
operator replicas as the chart's ServiceAccount), the budgets and pods it makes, what it scrapes, the calls it
sends through the openai SDK, and the upstream's ledger grouped as the report groups it.

The processes, pods and HTTP are tests/apiserver_stack.py's, as the reconciler tests use them; what is here is
what the spend history adds: two operator replicas, Prometheus and the calls."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import apiserver_stack
from apiserver_stack import REPO_ROOT, RETRIED, http
from controlplane import ControlPlane, pod_address
from openai import AsyncOpenAI
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess
from prometheus_server import PrometheusServer

from tokenbudget_api import names

FILES = REPO_ROOT / "charts" / "tokenbudget" / "files"
NS = "tb-prom"
PODS = {"chat-a": (pod_address(40), {"app": "chat", "tier": "users"}, "gpt-4o-mini"),
        "chat-b": (pod_address(41), {"app": "chat"}, "gpt-4o")}
USERS = ("alice", "bob")
OPERATOR_SETTINGS = {
    "webhook_config_owner": "Install", "tls_source": "SecretDir", "usage_interval_s": "0.5",
    "resync_interval_s": "1", "status_min_interval_s": "1", "lease_interval_s": "0.5",
    "leader_lease_duration_s": "3",
}
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """apiserver_stack.wait_for at Prometheus's pace: it scrapes each second, so a slower poll and a longer
    wait by default."""
    return apiserver_stack.wait_for(what, probe, timeout, interval=0.2, retry=(*RETRIED, IndexError))


@dataclass
class Stack:
    kube: ControlPlane
    operators: dict[str, OperatorProcess]  # replica "a" (leader first) and "b"
    prom: PrometheusServer
    upstream: str
    began: float  # wall time before any call
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def served(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = http("GET", f"{self.upstream}/_upstream/served", token=None)
        return found


def team(upstream: str, tokens: int) -> dict[str, Any]:
    return apiserver_stack.budget("team", upstream, NS, tokens=tokens, limit_name="daily",
                                  ladder=[{"at": 50, "action": "Alert"}])


def scrape_configs(operators: dict[str, OperatorProcess]) -> list[dict[str, Any]]:
    """What the chart's PodMonitors make: the job names the rules select on, and each target's namespace and
    pod labels; honor_labels on the operator, so the spend counters keep their budget's namespace."""
    return [
        {"job_name": "tokenbudget-operator", "honor_labels": True,
         "static_configs": [{"targets": [f"127.0.0.1:{op.metrics_port}"],
                             "labels": {"namespace": OPERATOR_NAMESPACE, "pod": f"tokenbudget-operator-{name}"}}
                            for name, op in operators.items()]},
        {"job_name": "tokenbudget-sidecar",
         "static_configs": [{"targets": [f"{ip}:{names.SIDECAR_ADMIN_PORT}"], "labels": {"namespace": NS, "pod": pod}}
                            for pod, (ip, _, _) in PODS.items()]},
    ]


def leader(kube: ControlPlane) -> str | None:
    """"a" or "b": which replica holds the operator's Lease."""
    lease = json.loads(kube.kubectl("get", "lease", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE,
                                    "-o", "json", check=False).stdout or "{}")
    holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
    found = re.match(r"operator-([ab])-", holder)
    return found[1] if found else None


def spend(calls_each: int, first: int) -> None:
    """Chat completions through the official openai SDK on both sidecars; chat-a's name alice or bob."""

    async def run() -> None:
        clients = {pod: AsyncOpenAI(base_url=f"http://{ip}:{names.SIDECAR_DATA_PORT}/openai/v1", api_key="sk-test",
                                    max_retries=0) for pod, (ip, _, _) in PODS.items()}
        try:
            await asyncio.gather(*(
                clients[pod].chat.completions.create(
                    model=PODS[pod][2], max_tokens=400,
                    extra_headers={"x-test-pod": pod, "x-upstream-output-tokens": str(150 + 10 * i),
                                   "x-upstream-cached-tokens": str(i % 3)},
                    messages=[{"role": "user", "content": f"Tell me about {i}."}],
                    **({"user": USERS[i % 2]} if pod == "chat-a" else {}))
                for pod in PODS for i in range(first, first + calls_each)))
        finally:
            for c in clients.values():
                await c.close()

    asyncio.run(run())


@dataclass
class Truth:
    """What the upstream served, grouped as the report groups it."""

    calls: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # by → group → tokens

    def add(self, by: str, group: str, tokens: int) -> None:
        self.tokens.setdefault(by, {})
        self.tokens[by][group] = self.tokens[by].get(group, 0) + tokens


def truth(served: list[dict[str, Any]]) -> Truth:
    t = Truth()
    for r in served:
        assert r["status"] == 200, r
        pod, total = r["request_headers"]["x-test-pod"], r["input_tokens"] + r["output_tokens"]
        budgets = ["team", "users"] if pod == "chat-a" else ["team"]
        for b in budgets:
            t.calls[f"{NS}/{b}"] = t.calls.get(f"{NS}/{b}", 0) + 1
            t.add("budget", f"{NS}/{b}", total)
            t.add("model", r["model"], total)
            t.add("namespace", NS, total)
            t.add("user", r["request_body"]["user"] if b == "users" else "(budgets without a per-User limit)", total)
            t.add("type", "input", r["input_tokens"])
            t.add("type", "output", r["output_tokens"])
            t.add("type", "cached_input", r["cached_input_tokens"])
        t.add("pod", f"{NS}/{pod}", total)
    return t
