"""The apiserver test stack: the operator reconciling TokenBudgets onto real sidecar processes, on the test
control plane. Shared by the reconciler tests (tests/reconciler/*_apiserver.py) and `make chaos`
(hardening/chaos.py, with its one cell in tests/hardening).

Everything is a real process: the operator (`python -m tokenbudget_operator`) as the ServiceAccount of
deploy/rbac.yaml, sidecars (`python -m tokenbudget_sidecar`), each bound to its own loopback address
(`controlplane.pod_address`) on the standard ports, and the test upstream. Each sidecar has a Pod object whose
status.podIP the test sets (no kubelet), so the operator finds the admin port the way it does in a cluster:
pod IP + 8788. The admin API is bearer-protected with the token of the namespace's Secret, as injected pods are.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from controlplane import ControlPlane, _die_with_parent, terminate
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess, namespace, service_account_kubeconfig

from tokenbudget_api import names
from tokenbudget_operator.injector import certs

REPO_ROOT = Path(__file__).resolve().parents[1]
RBAC = REPO_ROOT / "deploy" / "rbac.yaml"
TOKEN = "test-token"
T = TypeVar("T")
# Short intervals so the tests run in seconds; the webhook is served (SecretDir TLS) but never configured.
OPERATOR_SETTINGS = {
    "webhook_config_owner": "Install", "tls_source": "SecretDir", "usage_interval_s": "0.5",
    "resync_interval_s": "1", "status_min_interval_s": "2", "lease_interval_s": "0.5",
    "leader_lease_duration_s": "3", "key_secret_interval_s": "0.5",
}


# ----- processes -----------------------------------------------------------------------------------------


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)


def kill(proc: subprocess.Popen[bytes] | None, grace: float = 3.0) -> None:
    if proc is not None:
        terminate(proc, grace)


def http(method: str, url: str, body: Any = None, token: str | None = TOKEN) -> Any:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:  # loopback only
        raw = resp.read()
        return json.loads(raw) if raw else None


def http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
        return str(resp.read().decode())


RETRIED: tuple[type[Exception], ...] = (OSError, KeyError, ValueError)  # a process or object not there yet


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05,
             retry: tuple[type[Exception], ...] = RETRIED) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds.

    A `retry` exception counts as "not yet" and is what the failure shows as the last answer; any other fails
    at once. `interval` and `retry` let a caller with a slower clock (Prometheus scraping each second) poll at
    its own pace."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except retry as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@dataclass
class Sidecar:
    ip: str
    proc: subprocess.Popen[bytes]
    pod: str

    @property
    def admin(self) -> str:
        return f"http://{self.ip}:{names.SIDECAR_ADMIN_PORT}"

    @property
    def openai_url(self) -> str:
        return f"http://{self.ip}:{names.SIDECAR_DATA_PORT}/openai/v1"

    def leased(self, key: str) -> bool:
        """Whether every lease of budget `key` the sidecar holds grants something (zero: not allocated yet)."""
        policy = http("GET", f"{self.admin}/policy")
        leases = [lease for b in policy["budgets"] if f"{b['namespace']}/{b['name']}" == key
                  for lease in b.get("leases") or []]
        return all(float(lease["granted"]) > 0 for lease in leases)

    def budgets(self) -> dict[str, int]:
        """"namespace/name" → generation of every budget the sidecar enforces now."""
        policy = http("GET", f"{self.admin}/policy")
        return {f"{b['namespace']}/{b['name']}": int(b["generation"]) for b in policy["budgets"]}


@dataclass
class Stack:
    kube: ControlPlane
    operator: OperatorProcess
    sidecars: list[Sidecar]
    upstream: str
    workdir: Path
    token_file: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)  # killed at teardown

    def served(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = http("GET", f"{self.upstream}/_upstream/served", token=None)
        return found


def start_upstream(workdir: Path, timeout: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """The test upstream on a free loopback port: the process, and the URL it logs once it listens."""
    log = workdir / "upstream.log"
    proc = spawn([sys.executable, "-m", "tokenbudget_testing.upstream", "--host", "127.0.0.1", "--port", "0"],
                 dict(os.environ), log)

    def url() -> str | None:
        for line in log.read_text().splitlines():
            if "listening on " in line:
                return line.split("listening on ", 1)[1].strip()
        assert proc.poll() is None, log.read_text()
        return None

    return proc, wait_for("the test upstream", url, timeout=timeout)


def start_sidecar(ip: str, workdir: Path, token_file: Path,
                  env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **(env_extra or {}),
        names.SIDECAR_ENV_DATA_HOST: ip,
        names.SIDECAR_ENV_DATA_PORT: str(names.SIDECAR_DATA_PORT),
        names.SIDECAR_ENV_ADMIN_HOST: ip,
        names.SIDECAR_ENV_ADMIN_PORT: str(names.SIDECAR_ADMIN_PORT),
        names.SIDECAR_ENV_ADMIN_TOKEN_FILE: str(token_file),
        names.SIDECAR_ENV_LEDGER_DIR: str(workdir / f"ledger-{ip}"),
    }
    return spawn([sys.executable, "-m", "tokenbudget_sidecar"], env, workdir / f"sidecar-{ip}.log")


def pod_with_sidecar(name: str, labels: dict[str, str], ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "initContainers": [{"name": names.SIDECAR_CONTAINER, "image": "ghcr.io/tokenbudget/tokenbudget:0.1.0",
                                "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "registry.example.com/chat:1.4.2"}],
        },
    }


def set_pod_ip(kube: ControlPlane, ns: str, name: str, ip: str) -> None:
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
    kube.kubectl("patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status))


# ----- TokenBudgets --------------------------------------------------------------------------------------


def budget(name: str, upstream: str, ns: str, *, selector: dict[str, str] | None = None, tokens: int = 100_000,
           ladder: list[dict[str, Any]] | None = None, window: dict[str, Any] | None = None,
           limit_name: str = "daily-tokens") -> dict[str, Any]:
    """A TokenBudget in `ns` with one limit (`window`: a daily one unless given) and the test upstream as its
    OpenAI upstream; `selector` defaults to app=chat, the label every module's sidecars carry."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector or {"app": "chat"}},
        "timeZone": "UTC",
        "limits": [{"name": limit_name, "tokens": tokens, **(window or {"period": "Day"})}],
        "upstreams": [{"name": "openai", "baseURL": upstream, "dialect": "OpenAI"}],
    }
    if ladder:
        spec["ladder"] = ladder
    return {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def apply(kube: ControlPlane, manifest: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def condition(tb: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type `kind`, or {} while the operator has not written it."""
    return next((c for c in (tb.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


@contextlib.contextmanager
def operator_running(kube: ControlPlane, workdir: Path, **settings: str) -> Iterator[OperatorProcess]:
    """The operator as a real process, as the ServiceAccount of deploy/rbac.yaml; removes what it left.

    `settings`: TOKENBUDGET_OPERATOR_* values on top of OPERATOR_SETTINGS."""
    tls_dir = workdir / "tls"
    certs.write_material(certs.generate(["127.0.0.1"]), tls_dir)
    # A Lease left by another module's operator would make this one wait for it to expire.
    kube.kubectl("delete", "lease", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    operator = OperatorProcess(kube, workdir, "operator", tls_dir=str(tls_dir), **{**OPERATOR_SETTINGS, **settings})
    operator.env["KUBECONFIG"] = str(service_account_kubeconfig(kube, workdir, RBAC))
    try:
        operator.start()
        yield operator
    finally:
        operator.stop()
        kube.kubectl("delete", "configmap", "tokenbudget-usage-state", "-n", OPERATOR_NAMESPACE,
                     "--ignore-not-found", check=False)
        kube.kubectl("delete", "lease", "tokenbudget-operator", "-n", OPERATOR_NAMESPACE, "--ignore-not-found",
                     check=False)
        kube.kubectl("delete", "-f", str(RBAC), "--ignore-not-found", check=False)


# ----- the stack -----------------------------------------------------------------------------------------


def namespaces(kube: ControlPlane, ns: str) -> None:
    """The operator's namespace (kept if an earlier module made it) and `ns`: not injected, with the Secret
    whose token the sidecars' admin API wants."""
    with contextlib.suppress(Exception):
        kube.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    namespace(kube, ns, enabled=False, secret=True)


def sidecar_pod(kube: ControlPlane, ns: str, name: str, ip: str, labels: dict[str, str]) -> None:
    """The Pod object of the sidecar process on `ip`: created, then Running with that podIP (there is no kubelet
    to say so), which is where the operator looks for the sidecar's admin port."""
    kube.kubectl("create", "-f", "-", input=json.dumps(pod_with_sidecar(name, labels, ns)))
    set_pod_ip(kube, ns, name, ip)


@contextlib.contextmanager
def sidecar_stack(kube: ControlPlane, workdir: Path, ns: str, pods: dict[str, str], labels: dict[str, str],
                  sidecar_env: dict[str, str] | None = None, **operator_settings: str) -> Iterator[Stack]:
    """The stack in namespace `ns`: the test upstream, a sidecar process and its Pod (all with `labels`) for
    each `pods` entry (pod name → loopback address; `sidecar_env` on top of the environment), then the
    operator (`operator_settings` on top of OPERATOR_SETTINGS) once every sidecar answers. Module-scoped
    fixtures wrap it, each in its own `ns` and addresses.

    Teardown stops the operator, kills every process in `Stack.procs` (where a test puts a sidecar it
    restarts) and deletes `ns` without waiting for it."""
    token_file = workdir / "admin-token"
    token_file.write_text(TOKEN)
    procs: list[subprocess.Popen[bytes]] = []
    namespaces(kube, ns)
    try:
        upstream_proc, upstream = start_upstream(workdir)
        procs.append(upstream_proc)
        sidecars: list[Sidecar] = []
        for pod, ip in pods.items():
            sidecars.append(Sidecar(ip, start_sidecar(ip, workdir, token_file, sidecar_env), pod))
            procs.append(sidecars[-1].proc)
        for s in sidecars:
            wait_for(f"sidecar {s.ip}", lambda s=s: http("GET", f"{s.admin}/healthz", token=None), timeout=20)
            sidecar_pod(kube, ns, s.pod, s.ip, labels)
        with operator_running(kube, workdir, **operator_settings) as operator:
            yield Stack(kube, operator, sidecars, upstream, workdir, token_file, procs)
    finally:
        for proc in procs:
            kill(proc)
        kube.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)


@contextlib.contextmanager
def extra_sidecars(stack: Stack, ns: str, pods: dict[str, str], labels: dict[str, str],
                   sidecar_env: dict[str, str] | None = None) -> Iterator[list[Sidecar]]:
    """Sidecars beyond the stack's own for one test: a process and a Pod (with `labels`) for each `pods` entry
    (pod name → loopback address), yielded once every one answers. On the way out their Pods are deleted
    (without waiting) and their processes killed, whatever the test left, so the next test sees only the
    stack's sidecars."""
    extra: list[Sidecar] = []
    try:
        for pod, ip in pods.items():
            extra.append(Sidecar(ip, start_sidecar(ip, stack.workdir, stack.token_file, sidecar_env), pod))
        for s in extra:
            wait_for(f"sidecar {s.ip}", lambda s=s: http("GET", f"{s.admin}/healthz", token=None), timeout=20)
            sidecar_pod(stack.kube, ns, s.pod, s.ip, labels)
        yield extra
    finally:
        for s in extra:
            stack.kube.kubectl("delete", "pod", s.pod, "-n", ns, "--ignore-not-found", "--wait=false", check=False)
            kill(s.proc)
