"""The parts of the spend-history test (test_prometheus.py): the processes it runs (test upstream, sidecars,
operator replicas as the chart's ServiceAccount), the budgets and pods it makes, what it scrapes, the calls it
sends through the openai SDK, and the upstream's ledger grouped as the report groups it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from controlplane import ControlPlane, _die_with_parent, pod_address
from openai import AsyncOpenAI
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess
from prometheus_server import PrometheusServer

from tokenbudget_api import names

REPO_ROOT = Path(__file__).resolve().parents[2]
RBAC = REPO_ROOT / "deploy" / "rbac.yaml"
FILES = REPO_ROOT / "charts" / "tokenbudget" / "files"
NS = "tb-prom"
TOKEN = "test-token"
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
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (OSError, KeyError, ValueError, IndexError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def get_json(url: str, token: str | None = TOKEN) -> Any:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as resp:  # loopback only
        return json.loads(resp.read())


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)


@dataclass
class Stack:
    kube: ControlPlane
    operators: dict[str, OperatorProcess]  # replica "a" (leader first) and "b"
    prom: PrometheusServer
    upstream: str
    began: float  # wall time before any call
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def served(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get_json(f"{self.upstream}/_upstream/served", token=None)
        return found


def start_upstream(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = workdir / "upstream.log"
    proc = spawn([sys.executable, "-m", "tokenbudget_testing.upstream", "--host", "127.0.0.1", "--port", "0"],
                 dict(os.environ), log)

    def url() -> str | None:
        found = re.search(r"listening on (\S+)", log.read_text())
        assert proc.poll() is None, log.read_text()
        return found[1] if found else None

    return proc, wait_for("the test upstream", url)


def start_sidecar(ip: str, workdir: Path, token_file: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, names.SIDECAR_ENV_DATA_HOST: ip, names.SIDECAR_ENV_DATA_PORT: str(names.SIDECAR_DATA_PORT),
           names.SIDECAR_ENV_ADMIN_HOST: ip, names.SIDECAR_ENV_ADMIN_PORT: str(names.SIDECAR_ADMIN_PORT),
           names.SIDECAR_ENV_ADMIN_TOKEN_FILE: str(token_file),
           names.SIDECAR_ENV_LEDGER_DIR: str(workdir / f"ledger-{ip}")}
    return spawn([sys.executable, "-m", "tokenbudget_sidecar"], env, workdir / f"sidecar-{ip}.log")


def add_pod(kube: ControlPlane, name: str, ip: str, labels: dict[str, str]) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
           "spec": {"initContainers": [{"name": names.SIDECAR_CONTAINER, "restartPolicy": "Always",
                                        "image": "ghcr.io/tokenbudget/tokenbudget:0.1.0"}],
                    "containers": [{"name": "app", "image": "registry.example.com/chat:1"}]}}
    kube.kubectl("create", "-f", "-", input=json.dumps(pod))
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    kube.kubectl("patch", "pod", name, "-n", NS, "--subresource=status", "--type=merge", "-p", json.dumps(status))


def budget(name: str, upstream: str, selector: dict[str, str], limit: dict[str, Any],
           ladder: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"matchLabels": selector}, "timeZone": "UTC", "limits": [limit],
                            "upstreams": [{"name": "openai", "baseURL": upstream, "dialect": "OpenAI"}]}
    if ladder:
        spec["ladder"] = ladder
    return {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def team(upstream: str, tokens: int) -> dict[str, Any]:
    return budget("team", upstream, {"app": "chat"}, {"name": "daily", "period": "Day", "tokens": tokens},
                  ladder=[{"at": 50, "action": "Alert"}])


def operator_kubeconfig(kube: ControlPlane, workdir: Path) -> Path:
    """The operator runs as the chart's ServiceAccount (deploy/rbac.yaml): least privilege, tested."""
    kube.kubectl("apply", "-f", str(RBAC))
    token = kube.kubectl("create", "token", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE,
                         "--duration=1h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


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
