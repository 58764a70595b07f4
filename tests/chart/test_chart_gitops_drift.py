"""GitOps without drift, against the real kube-apiserver: `helm install` with the default values, the operator
running as the chart's own ServiceAccount with the chart's own settings, then a server-side diff of every
object helm made. Nothing the chart renders may differ, and the only fields anyone but helm wrote are the
ones examples/gitops/ tells Argo CD and Flux to ignore (each of them, so the list is not stale either).

No kubelet here: the operator is a local process given the environment of the chart's Deployment (only its
listen addresses and the API credentials differ); tests/realnode runs the same check on the real install.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from controlplane import ControlPlane
from gitops_examples import documented_ignores, drift
from operator_harness import OperatorProcess
from test_chart import CHART, by_key, documents, helm, operator_container, render

from tokenbudget_api import names

NS = "tb-gitops"
RUN_FOR_S = 30.0  # the operator's rounds (CA refresh every 10 s, status, leases) happen several times

__all__ = ["helm"]  # the chart tests' helm fixture


def helm_run(helm: Path, kube: ControlPlane, *args: str) -> str:
    done = subprocess.run(
        [str(helm), "--kubeconfig", str(kube.kubeconfig), *args],
        capture_output=True, text=True, check=False, timeout=180,
        env={**os.environ, "HELM_CACHE_HOME": str(kube.workdir / "helm-cache"),
             "HELM_CONFIG_HOME": str(kube.workdir / "helm-config"), "HELM_DATA_HOME": str(kube.workdir / "helm-data")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def token_kubeconfig(kube: ControlPlane, workdir: Path) -> Path:
    token = kube.kubectl("create", "token", "tokenbudget-operator", "-n", NS, "--duration=1h").stdout.strip()
    config = yaml.safe_load(kube.kubeconfig.read_text())
    config["users"] = [{"name": "admin", "user": {"token": token}}]
    path = workdir / "chart-operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def installed(helm: Path, kube: ControlPlane, tmp_path: Path) -> Iterator[tuple[str, OperatorProcess]]:
    helm_run(helm, kube, "install", "tokenbudget", str(CHART), "-n", NS, "--create-namespace",
             "--set", "sidecarAdminToken.create=false", "--set", "replicas=1")  # fmt: skip
    env = {e["name"]: e["value"] for e in operator_container(by_key(documents(render(
        helm, "sidecarAdminToken.create=false", "replicas=1", namespace=NS))))["env"]}  # fmt: skip
    settings = {name.removeprefix("TOKENBUDGET_OPERATOR_").lower(): value for name, value in env.items()}
    for local in ("webhook_listen_host", "webhook_port", "metrics_host", "metrics_port"):
        settings.pop(local, None)  # the harness's loopback ports
    # The harness's own defaults for these two would win over the operator's: the chart relies on the latter.
    settings.setdefault("webhook_configuration_name", names.WEBHOOK_CONFIGURATION)
    operator = OperatorProcess(kube, tmp_path, "chart-operator", **settings)
    operator.env.pop("TOKENBUDGET_OPERATOR_WEBHOOK_URL")  # the chart's Service, as in a cluster
    operator.env["TOKENBUDGET_OPERATOR_WEBHOOK_CONFIG_OWNER"] = settings["webhook_config_owner"]
    operator.env["KUBECONFIG"] = str(token_kubeconfig(kube, tmp_path))
    try:
        operator.start()
        yield helm_run(helm, kube, "get", "manifest", "tokenbudget", "-n", NS), operator
    finally:
        operator.stop()
        helm_run(helm, kube, "uninstall", "tokenbudget", "-n", NS, "--wait")
        kube.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)


def test_after_the_operator_ran_a_server_side_diff_shows_only_the_documented_fields(
    kube: ControlPlane, installed: tuple[str, OperatorProcess]
) -> None:
    manifest, operator = installed
    assert operator.env["TOKENBUDGET_OPERATOR_TLS_SOURCE"] == "CASecret"  # the chart's default
    time.sleep(RUN_FOR_S)
    assert operator.proc is not None
    assert operator.proc.poll() is None
    found = drift(manifest, kube.kubectl)
    assert not found.diffs, json.dumps(found.diffs, indent=1)
    ignores = documented_ignores()
    undocumented = [f for f in found.foreign if not any(i.covers(f[0], f[1], f[3]) for i in ignores)]
    assert not undocumented, undocumented
    for ignore in ignores:  # each documented field was written: the operator's CA and its caBundle
        assert any(ignore.covers(kind, name, path) for kind, name, _, path in found.foreign), ignore
    assert {manager for *_, manager, _ in found.foreign} == {"tokenbudget-operator"}

    # Someone else changes a field the chart renders: the same check names it, and who wrote it.
    kube.kubectl("patch", "mutatingwebhookconfiguration", names.WEBHOOK_CONFIGURATION, "--type", "json",
                 "-p", '[{"op": "replace", "path": "/webhooks/0/timeoutSeconds", "value": 29}]')  # fmt: skip
    tampered = drift(manifest, kube.kubectl)
    assert tampered.diffs == {
        f"MutatingWebhookConfiguration/{names.WEBHOOK_CONFIGURATION}": ["/webhooks/0/timeoutSeconds: live 29 → chart 5"]
    }
    assert any(m == "kubectl-patch" and p[-1] == "f:timeoutSeconds" for _, _, m, p in tampered.foreign)
    print(f"\ndrift after {RUN_FOR_S:.0f} s: {len(manifest.split(chr(10) + '---'))} objects, "
          f"{len(found.foreign)} fields written by the operator, all documented; no server-side diff")


