"""The Helm chart, rendered by a real helm and applied to the real kube-apiserver.

What the chart repeats from the code is compared with the code: the webhook configuration with
webhookconfig.py's, the Deployment's environment with OperatorSettings, the RBAC with deploy/rbac.yaml
(rendered from the chart, and the account the apiserver tests run the operator as).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.webhookconfig import mutating_webhook_configuration

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "charts" / "tokenbudget"
NS = "tokenbudget-system"
CERT_MANAGER_KINDS = {"Issuer", "Certificate"}


@pytest.fixture(scope="session")
def helm() -> Path:
    """HELM_BIN (make test sets it from scripts/helm.sh), else the cached build. Missing: CI fails."""
    found = os.environ.get("HELM_BIN")
    if found is None:
        cached = subprocess.run([str(REPO_ROOT / "scripts" / "helm.sh")], capture_output=True, text=True,
                                env={**os.environ, "GOFLAGS": "-mod=mod", "GOPROXY": "off"}, check=False)
        found = cached.stdout.strip().splitlines()[-1] if cached.returncode == 0 and cached.stdout.strip() else None
    if found and Path(found).is_file():
        return Path(found)
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail("CI must not skip the chart tests: set HELM_BIN (scripts/helm.sh builds helm)", pytrace=False)
    pytest.skip("helm unavailable: run scripts/helm.sh")


def render(helm: Path, *sets: str, namespace: str = NS, show: str | None = None) -> str:
    args = [str(helm), "template", "tokenbudget", str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    if show:
        args += ["--show-only", show]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout


def objects(text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(text) if o}


def test_the_chart_lints_clean(helm: Path) -> None:
    done = subprocess.run([str(helm), "lint", str(CHART), "--strict"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rendering_is_deterministic_so_gitops_sees_no_drift(helm: Path) -> None:
    sets = ("sidecarAdminToken.namespaces={team-a}", "sidecarAdminToken.value=s3cret")
    assert render(helm, *sets) == render(helm, *sets)


def test_deploy_rbac_yaml_is_the_charts_rbac(helm: Path) -> None:
    """deploy/rbac.yaml is what `make deploy` renders: the file the apiserver tests run the operator with."""
    rendered = render(helm, show="templates/rbac.yaml")
    assert (REPO_ROOT / "deploy" / "rbac.yaml").read_text() == rendered, "run `make deploy`"


@pytest.mark.parametrize("sets", [(), ("webhook.allowPodOptIn=true", "webhook.excludedNamespaces={batch,ci}",
                                       "webhook.failurePolicy=Fail", "webhook.timeoutSeconds=9")],
                         ids=["defaults", "options"])
def test_the_webhook_configuration_is_the_one_the_operator_would_write(
    helm: Path, sets: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    chart = objects(render(helm, *sets))
    deployment = chart["Deployment", "tokenbudget-operator"]
    for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]:
        monkeypatch.setenv(e["name"], e["value"])  # read as the operator reads them
    monkeypatch.setenv("TOKENBUDGET_OPERATOR_NAMESPACE", NS)
    settings = OperatorSettings()
    client = {"service": {"name": settings.webhook_service, "namespace": NS, "port": 443,
                          "path": "/inject-sidecar"}}
    expected = mutating_webhook_configuration(settings, client)
    got = chart["MutatingWebhookConfiguration", settings.webhook_configuration_name]
    assert got["webhooks"] == expected["webhooks"]
    assert got["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NS}/tokenbudget-webhook"


def test_every_setting_the_deployment_passes_is_one_the_operator_reads(helm: Path) -> None:
    chart = objects(render(helm))
    container = chart["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]["containers"][0]
    fields = {f"TOKENBUDGET_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    unknown = [e["name"] for e in container["env"] if e["name"] not in fields]
    assert not unknown, f"the operator ignores {unknown}"
    secret = chart["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]["volumes"][0]["secret"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert mount == str(OperatorSettings.model_fields["tls_dir"].default)
    assert secret["secretName"] == chart["Certificate", "tokenbudget-webhook"]["spec"]["secretName"]


def test_the_admin_token_secret_needs_a_value_and_is_made_per_namespace(helm: Path) -> None:
    with pytest.raises(AssertionError, match=r"sidecarAdminToken\.value is required"):
        render(helm, "sidecarAdminToken.namespaces={team-a}")
    text = render(helm, "sidecarAdminToken.namespaces={team-a,team-b}", "sidecarAdminToken.value=s3cret")
    secrets = [o for o in yaml.safe_load_all(text) if o and o["kind"] == "Secret"]
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["team-a", "team-b"]
    assert all(s["data"]["token"] == "czNjcmV0" for s in secrets)  # base64 of s3cret


def test_the_rendered_chart_applies_to_the_apiserver(helm: Path, kube: ControlPlane) -> None:
    """Without cert-manager (not in the test control plane); its two objects are checked as YAML above."""
    namespace = "tokenbudget-chart"
    kube.kubectl("create", "namespace", namespace, check=False)
    kube.kubectl("create", "namespace", "team-chart", check=False)
    text = render(helm, "webhook.certManager.enabled=false", "webhook.caBundle=Zm9v",
                  "sidecarAdminToken.namespaces={team-chart}", "sidecarAdminToken.value=s3cret",
                  namespace=namespace)
    docs = [o for o in yaml.safe_load_all(text) if o]
    assert not {o["kind"] for o in docs} & CERT_MANAGER_KINDS
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    try:
        kube.kubectl("apply", "--dry-run=server", "-f", "-", input=manifest)
        kube.kubectl("apply", "-f", "-", input=manifest)
        deployment = json.loads(kube.kubectl("get", "deployment", "tokenbudget-operator", "-n", namespace,
                                             "-o", "json").stdout)
        assert deployment["spec"]["replicas"] == 2
        token = json.loads(kube.kubectl("get", "secret", "tokenbudget-sidecar-admin", "-n", "team-chart",
                                        "-o", "json").stdout)["data"]["token"]
        assert token == "czNjcmV0"
    finally:
        kube.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=manifest, check=False)
        kube.kubectl("delete", "namespace", namespace, "team-chart", "--wait=false", check=False)
