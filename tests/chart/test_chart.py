"""The Helm chart, rendered by a real helm (scripts/helm.sh) and applied to the real kube-apiserver.

What the chart repeats from the code is compared with the code, never with a copy typed here: the webhook
configuration with webhookconfig.py's for the settings the rendered Deployment passes (read the way the
operator reads them), the environment with OperatorSettings' fields, the RBAC with deploy/rbac.yaml (the
account the apiserver tests run the operator as).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane

from tokenbudget_api import names
from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.injector import certs
from tokenbudget_operator.injector.webhookconfig import client_config, mutating_webhook_configuration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "tokenbudget"
RBAC_FILE = REPO_ROOT / "deploy" / "rbac.yaml"
NS = "tokenbudget-system"
RBAC_KINDS = frozenset({"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
CERT_MANAGER_KINDS = frozenset({"Issuer", "ClusterIssuer", "Certificate"})
CLUSTER_SCOPED = frozenset({"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"})
TOKEN = "s3cret-admin-token"
CA = certs.generate(["tokenbudget-webhook.tokenbudget-system.svc"])  # a real CA for the bring-your-own mode
CA_BUNDLE = base64.b64encode(CA.ca_pem).decode()

# Every option of values.yaml that changes what is rendered, one set per mode (ids name them).
VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "own-tls": (
        f"webhook.caBundle={CA_BUNDLE}",
        "webhook.tlsSecretName=my-webhook-tls",
    ),
    "cert-manager": ("webhook.certManager.enabled=true",),
    "issuer": (
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=corp-ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ),
    "webhook-options": (
        "webhook.allowPodOptIn=true",
        "webhook.excludedNamespaces={batch,ci}",
        "webhook.failurePolicy=Fail",
        "webhook.timeoutSeconds=9",
    ),
    "admin-tokens": ("sidecarAdminToken.namespaces={team-a,team-b}", f"sidecarAdminToken.value={TOKEN}"),
    "existing-secrets": ("sidecarAdminToken.create=false", "sidecarAdminToken.namespaces={team-a}"),
    "image-and-sidecar": (
        "image.repository=registry.example/tb",
        "image.tag=1.2.3",
        "image.pullPolicy=Always",
        "imagePullSecrets[0].name=regcred",
        "sidecar.mode=Classic",
        "sidecar.logLevel=WARNING",
        "sidecar.resources.requests.cpu=5m",
        "replicas=3",
        "nodeSelector.pool=system",
        "operator.logLevel=DEBUG",
    ),
}


@pytest.fixture(scope="session")
def helm() -> Path:
    """HELM_BIN (make test sets it from scripts/helm.sh), else a cached build. Missing: CI fails, else skip."""
    found = os.environ.get("HELM_BIN")
    if not found:
        # Only what is cached already (GOPROXY=off: no build inside a test run).
        cached = subprocess.run(
            [str(REPO_ROOT / "scripts" / "helm.sh")],
            capture_output=True,
            text=True,
            env={**os.environ, "GOPROXY": "off"},
            check=False,
            timeout=120,
        )
        lines = cached.stdout.strip().splitlines()
        found = lines[-1] if cached.returncode == 0 and lines else None
    if found and Path(found).is_file():
        return Path(found)
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail("CI must not skip the chart tests: set HELM_BIN (scripts/helm.sh builds helm)", pytrace=False)
    pytest.skip("helm unavailable: run scripts/helm.sh or set HELM_BIN")


def run_helm(helm: Path, *args: str) -> str:
    done = subprocess.run([str(helm), *args], capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}:\n{done.stdout}{done.stderr}")
    return done.stdout


def render(
    helm: Path, *sets: str, namespace: str = NS, release: str = "tokenbudget", extra: tuple[str, ...] = ()
) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    for s in sets:
        args += ["--set", s]
    return run_helm(helm, *args)


def documents(text: str) -> list[dict[str, Any]]:
    return [o for o in yaml.safe_load_all(text) if o]


def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) → object; the admin token Secrets share a name, so Secrets are keyed by namespace too."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for o in docs:
        meta = o["metadata"]
        name = f"{meta['namespace']}/{meta['name']}" if o["kind"] == "Secret" else meta["name"]
        assert (o["kind"], name) not in out, f"rendered twice: {o['kind']} {name}"
        out[o["kind"], name] = o
    return out


def operator_container(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


ReadSettings = Callable[[dict[str, Any]], OperatorSettings]


@pytest.fixture
def operator_settings(monkeypatch: pytest.MonkeyPatch) -> ReadSettings:
    """OperatorSettings from a rendered Deployment's environment, read the way the operator reads it."""

    def read(container: dict[str, Any]) -> OperatorSettings:
        for name in [n for n in os.environ if n.startswith("TOKENBUDGET_OPERATOR_")]:
            monkeypatch.delenv(name)
        for e in container["env"]:
            monkeypatch.setenv(e["name"], e["value"])
        return OperatorSettings()

    return read


# ----- helm itself ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["defaults", "own-tls", "cert-manager", "admin-tokens", "existing-secrets"])
def test_the_chart_lints_clean_in_strict_mode(helm: Path, variant: str) -> None:
    """helm lint renders every template, NOTES.txt included, and --strict fails on warnings too."""
    args = ["lint", str(CHART), "--strict", "--namespace", NS]
    for s in VARIANTS[variant]:
        args += ["--set", s]
    out = run_helm(helm, *args)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out, out
    assert "[ERROR]" not in out, out


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rendering_twice_gives_the_same_bytes_so_gitops_sees_no_drift(helm: Path, variant: str) -> None:
    first = render(helm, *VARIANTS[variant])
    assert first == render(helm, *VARIANTS[variant])
    assert by_key(documents(first))  # and parses, with no object rendered twice


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("sidecarAdminToken.namespaces={team-a}",), r"sidecarAdminToken\.value is required"),
        (("webhook.failurePolicy=Never",), r"webhook\.failurePolicy must be Ignore or Fail"),
        (("sidecar.mode=Sometimes",), r"sidecar\.mode must be Auto, Native or Classic"),
    ],
    ids=["admin-token-without-value", "bad-failure-policy", "bad-sidecar-mode"],
)
def test_incomplete_values_are_refused_with_a_message_naming_the_value(
    helm: Path, sets: tuple[str, ...], message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        render(helm, *sets)


# ----- what the chart repeats from the code --------------------------------------------------------------


def rbac_objects(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in docs if o["kind"] in RBAC_KINDS}


@pytest.mark.parametrize(("release", "namespace"), [("tokenbudget", NS), ("tb", "platform-budgets")])
def test_the_charts_rbac_is_exactly_deploy_rbac_yaml(helm: Path, release: str, namespace: str) -> None:
    """Same objects, rules, role refs and subjects as the file the operator is tested with; only the namespace
    follows the release. Every template counts, so a rule added anywhere in the chart fails here."""
    chart = rbac_objects(documents(render(helm, *VARIANTS["webhook-options"], release=release, namespace=namespace)))
    expected = rbac_objects(documents(RBAC_FILE.read_text()))
    assert sorted(chart) == sorted(expected)
    for key, want in expected.items():
        got = chart[key]
        if key[0] in CLUSTER_SCOPED:
            assert "namespace" not in got["metadata"], key
        else:
            assert (got["metadata"]["namespace"], want["metadata"]["namespace"]) == (namespace, NS), key
        assert got.get("rules") == want.get("rules"), key
        assert got.get("roleRef") == want.get("roleRef"), key
        want_subjects = [
            {**s, "namespace": namespace} if s.get("namespace") == NS else s for s in want.get("subjects", [])
        ]
        assert got.get("subjects", []) == want_subjects, key


@pytest.mark.parametrize("variant", ["defaults", "own-tls", "cert-manager", "webhook-options"])
def test_the_webhook_configuration_is_the_one_the_operator_would_write(
    helm: Path, variant: str, operator_settings: ReadSettings
) -> None:
    """webhookconfig.py builds it for the Deployment's settings; the chart must render exactly that, the CA
    aside: the operator patches it in (default: never rendered, so helm and GitOps leave the operator's value
    alone), cert-manager injects it (annotation), or it is the caBundle given."""
    docs = by_key(documents(render(helm, *VARIANTS[variant])))
    settings = operator_settings(operator_container(docs))
    assert settings.namespace == NS
    got = docs["MutatingWebhookConfiguration", settings.webhook_configuration_name]
    if variant == "own-tls":
        expected = mutating_webhook_configuration(settings, client_config(settings, CA.ca_pem))
        assert "annotations" not in got["metadata"]
    else:
        client = client_config(settings, b"")
        del client["caBundle"]
        expected = mutating_webhook_configuration(settings, client)
        if variant == "cert-manager":
            assert got["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NS}/tokenbudget-webhook"}
        else:
            assert "annotations" not in got["metadata"]
            assert settings.tls_source.value == "CASecret"
    assert got["webhooks"] == expected["webhooks"]
    assert len(got["webhooks"]) == (2 if variant == "webhook-options" else 1)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_deployment_passes_only_settings_the_operator_reads_and_they_parse(
    helm: Path, variant: str, operator_settings: ReadSettings
) -> None:
    docs = by_key(documents(render(helm, *VARIANTS[variant])))
    container = operator_container(docs)
    fields = {f"TOKENBUDGET_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    unknown = [e["name"] for e in container["env"] if e["name"] not in fields]
    assert not unknown, f"the operator ignores {unknown}"
    settings = operator_settings(container)  # raises if a value does not validate
    assert settings.webhook_config_owner.value == "Install"
    own_ca = variant not in ("own-tls", "cert-manager", "issuer")
    assert settings.tls_source.value == ("CASecret" if own_ca else "SecretDir")
    if variant == "image-and-sidecar":
        assert container["image"] == settings.sidecar_image == "registry.example/tb:1.2.3"
        assert settings.sidecar_image_pull_policy == "Always"
        assert settings.sidecar_mode.value == "Classic"
        assert settings.sidecar_log_level == "WARNING"
        resources = {"requests": {"cpu": "5m", "memory": "160Mi"}, "limits": {"memory": "256Mi"}}
        assert settings.sidecar_resources == resources
        assert settings.log_level == "DEBUG"
    elif variant == "defaults":  # the chart's sidecar resources are the operator's own defaults, shown in values
        assert settings.sidecar_resources == OperatorSettings.model_fields["sidecar_resources"].get_default(
            call_default_factory=True
        )


# operator.notifications.<value> → the OperatorSettings field it sets (notify_loop.py, notify_send.py)
NOTIFY_VALUES = {"intervalSeconds": "notify_interval_s", "attempts": "notify_attempts",
                 "backoffSeconds": "notify_backoff_s", "backoffMaxSeconds": "notify_backoff_max_s",
                 "timeoutSeconds": "notify_timeout_s", "retryAfterSeconds": "notify_retry_after_s",
                 "summaryDelaySeconds": "notify_summary_delay_s"}


def test_notification_settings_reach_the_operator_from_values_with_its_own_defaults(
    helm: Path, operator_settings: ReadSettings
) -> None:
    """Every notify_* setting is a chart value, set in the environment even at its default (so the chart's
    defaults, shown in values.yaml and the README, are the ones in force), and equal to config.py's."""
    container = operator_container(by_key(documents(render(helm))))
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = operator_settings(container)
    for field in NOTIFY_VALUES.values():
        assert f"TOKENBUDGET_OPERATOR_{field.upper()}" in env, f"{field} is not set from the chart"
        assert getattr(settings, field) == OperatorSettings.model_fields[field].default, field
    sets = {"intervalSeconds": 2, "attempts": 3, "backoffSeconds": 0.25, "backoffMaxSeconds": 4,
            "timeoutSeconds": 5, "retryAfterSeconds": 120, "summaryDelaySeconds": 0}
    assert sets.keys() == NOTIFY_VALUES.keys()
    # --set-json: plain --set reads 0.25 as a string, which the schema refuses (numbers only)
    container = operator_container(by_key(documents(render(
        helm, extra=("--set-json", f"operator.notifications={json.dumps(sets)}")))))
    settings = operator_settings(container)
    assert {k: getattr(settings, NOTIFY_VALUES[k]) for k in sets} == sets


@pytest.mark.parametrize("variant", ["defaults", "own-tls", "cert-manager", "image-and-sidecar"])
def test_ports_probes_tls_mount_and_service_match_the_operators_settings(
    helm: Path, variant: str, operator_settings: ReadSettings
) -> None:
    docs = by_key(documents(render(helm, *VARIANTS[variant])))
    container = operator_container(docs)
    settings = operator_settings(container)
    pod = docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhook": settings.webhook_port, "metrics": settings.metrics_port}
    # Probes on the operations port's endpoints (ops.py serves /healthz and /readyz there).
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # The webhook Service the configuration names reaches the webhook port, on 443 as client_config says.
    service = docs["Service", settings.webhook_service]
    assert service["metadata"]["namespace"] == NS
    assert service["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    pod_labels = docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert docs["Deployment", "tokenbudget-operator"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # The TLS Secret is mounted where the operator reads it, and it is the one cert-manager writes; by default
    # nothing is mounted: the operator reads its CA Secret through the API, the one this chart makes empty.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if variant in ("defaults", "image-and-sidecar"):
        assert "webhook-tls" not in mounts
        assert "webhook-tls" not in volumes
        ca_secret = docs["Secret", f"{NS}/{settings.ca_secret}"]
        assert "data" not in ca_secret
        assert "stringData" not in ca_secret
        assert not {kind for kind, _ in docs} & CERT_MANAGER_KINDS
        return
    assert ("Secret", f"{NS}/{settings.ca_secret}") not in docs
    assert Path(mounts["webhook-tls"]["mountPath"]) == settings.tls_dir
    secret_name = volumes["webhook-tls"]["secret"]["secretName"]
    if variant == "own-tls":
        assert secret_name == "my-webhook-tls"
        assert not {kind for kind, _ in docs} & CERT_MANAGER_KINDS
    else:
        certificate = docs["Certificate", "tokenbudget-webhook"]
        assert certificate["spec"]["secretName"] == secret_name
        host = f"{settings.webhook_service}.{NS}.svc"
        assert host in certificate["spec"]["dnsNames"]


@pytest.mark.parametrize("variant", ["cert-manager", "issuer"])
def test_cert_manager_issues_the_webhook_certificate_from_the_chosen_issuer(helm: Path, variant: str) -> None:
    docs = by_key(documents(render(helm, *VARIANTS[variant])))
    issuer_ref = docs["Certificate", "tokenbudget-webhook"]["spec"]["issuerRef"]
    if variant == "issuer":
        assert issuer_ref == {"name": "corp-ca", "kind": "ClusterIssuer"}
        assert not [key for key in docs if key[0] == "Issuer"]
    else:
        issuer = docs["Issuer", issuer_ref["name"]]
        assert issuer_ref["kind"] == "Issuer"
        assert issuer["metadata"]["namespace"] == NS
        assert issuer["spec"] == {"selfSigned": {}}


@pytest.mark.parametrize("variant", ["defaults", "own-tls", "cert-manager"])
def test_the_tls_rights_are_granted_only_to_the_operator_that_manages_its_ca(
    helm: Path, variant: str, operator_settings: ReadSettings
) -> None:
    """get/patch of the one CA Secret and the one webhook configuration the settings name, and only when the
    operator keeps its own CA: with cert-manager or your own Secret it never writes either."""
    docs = by_key(documents(render(helm, *VARIANTS[variant])))
    settings = operator_settings(operator_container(docs))
    cluster_rules = docs["ClusterRole", "tokenbudget-operator"]["rules"]
    role_rules = docs["Role", "tokenbudget-operator"]["rules"]
    webhook_rules = [r for r in cluster_rules if "mutatingwebhookconfigurations" in r["resources"]]
    secret_rules = [r for r in role_rules if "secrets" in r["resources"]]
    if variant != "defaults":
        assert webhook_rules == secret_rules == []
        return
    assert webhook_rules == [{
        "apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
        "resourceNames": [settings.webhook_configuration_name], "verbs": ["get", "patch"],
    }]  # fmt: skip
    assert secret_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [settings.ca_secret], "verbs": ["get", "patch"]}
    ]


def test_the_operator_pod_is_locked_down_and_can_still_write_its_temporary_files(helm: Path) -> None:
    docs = by_key(documents(render(helm)))
    deployment = docs["Deployment", "tokenbudget-operator"]
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    assert deployment["spec"]["replicas"] == 2
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"ghcr.io/tokenbudget/tokenbudget:{chart['appVersion']}"
    assert container["command"] == ["tokenbudget-operator"]
    assert pod["serviceAccountName"] == "tokenbudget-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    # certs.server_context hands the key to ssl through tempfile: the temporary directory must be writable.
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert tempfile.gettempdir() in writable


def test_admin_token_secrets_are_made_per_namespace_from_the_value_or_not_at_all(helm: Path) -> None:
    docs = documents(render(helm, *VARIANTS["admin-tokens"]))
    secrets = [o for o in docs if o["kind"] == "Secret" and o["metadata"]["name"] != names.WEBHOOK_CA_SECRET]
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["team-a", "team-b"]
    for s in secrets:
        assert s["metadata"]["name"] == names.ADMIN_TOKEN_SECRET
        assert base64.b64decode(s["data"][names.ADMIN_TOKEN_SECRET_KEY]).decode() == TOKEN
    for variant in ("defaults", "existing-secrets"):
        rendered = documents(render(helm, *VARIANTS[variant]))
        assert [o["metadata"]["name"] for o in rendered if o["kind"] == "Secret"] == [names.WEBHOOK_CA_SECRET], variant


# ----- against the real kube-apiserver -------------------------------------------------------------------


def fresh_namespace(kube: ControlPlane, prefix: str) -> str:
    """A new namespace: without a namespace controller a deleted one stays Terminating, so names never repeat."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def chart_namespaces(kube: ControlPlane) -> Iterator[tuple[str, str]]:
    """A release namespace and a team namespace, deleted afterwards."""
    release_ns, team_ns = fresh_namespace(kube, "tokenbudget-chart"), fresh_namespace(kube, "team-chart")
    try:
        yield release_ns, team_ns
    finally:
        kube.kubectl("delete", "namespace", release_ns, team_ns, "--ignore-not-found", "--wait=false", check=False)


def as_list(docs: list[dict[str, Any]]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})


@pytest.mark.parametrize("variant", ["defaults", "own-tls", "webhook-options", "image-and-sidecar"])
def test_the_rendered_chart_is_accepted_by_the_apiserver_and_its_namespaced_part_is_created(
    helm: Path, kube: ControlPlane, chart_namespaces: tuple[str, str], variant: str
) -> None:
    """Everything through server-side dry run (schema, validation, admission), then the namespaced objects for
    real. Not the cert-manager objects: cert-manager is not installed in the test control plane."""
    release_ns, team_ns = chart_namespaces
    sets = (*VARIANTS[variant], f"sidecarAdminToken.namespaces={{{team_ns}}}", f"sidecarAdminToken.value={TOKEN}")
    docs = [o for o in documents(render(helm, *sets, namespace=release_ns)) if o["kind"] not in CERT_MANAGER_KINDS]
    kinds = {o["kind"] for o in docs}
    assert {"Deployment", "Service", "Secret", "MutatingWebhookConfiguration", *RBAC_KINDS} <= kinds
    kube.kubectl("apply", "--dry-run=server", "-f", "-", input=as_list(docs))

    namespaced = [o for o in docs if o["kind"] not in CLUSTER_SCOPED]
    kube.kubectl("apply", "-f", "-", input=as_list(namespaced))
    for o in namespaced:
        stored = json.loads(
            kube.kubectl(
                "get", o["kind"].lower(), o["metadata"]["name"], "-n", o["metadata"]["namespace"], "-o", "json"
            ).stdout
        )
        assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == "tokenbudget"
    deployment = json.loads(
        kube.kubectl("get", "deployment", "tokenbudget-operator", "-n", release_ns, "-o", "json").stdout
    )
    assert deployment["spec"]["replicas"] == (3 if variant == "image-and-sidecar" else 2)
    token = json.loads(kube.kubectl("get", "secret", names.ADMIN_TOKEN_SECRET, "-n", team_ns, "-o", "json").stdout)[
        "data"
    ][names.ADMIN_TOKEN_SECRET_KEY]
    assert base64.b64decode(token).decode() == TOKEN


def test_the_operator_pod_passes_the_restricted_pod_security_standard(
    helm: Path, kube: ControlPlane, chart_namespaces: tuple[str, str]
) -> None:
    """The apiserver's PodSecurity admission judges a pod made from the Deployment's template."""
    release_ns, _ = chart_namespaces
    kube.kubectl("label", "namespace", release_ns, "pod-security.kubernetes.io/enforce=restricted")
    deployment = by_key(documents(render(helm, namespace=release_ns)))["Deployment", "tokenbudget-operator"]
    template = copy.deepcopy(deployment["spec"]["template"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "tokenbudget-operator-psa", "namespace": release_ns, **template["metadata"]},
        "spec": template["spec"],
    }
    done = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert done.returncode == 0, done.stderr
    assert "violate" not in done.stderr, done.stderr


def test_an_existing_admin_token_is_kept_and_then_no_value_is_needed(
    helm: Path, kube: ControlPlane, chart_namespaces: tuple[str, str]
) -> None:
    """helm's lookup (install/upgrade, or template --dry-run=server) reads the token in the cluster: an upgrade
    keeps the one the release made, and a namespace whose Secret exists renders without sidecarAdminToken.value.
    (Without cert-manager here: helm 4 checks every kind against the cluster, which has no cert-manager.)"""
    release_ns, team_ns = chart_namespaces
    made_by_the_release = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names.ADMIN_TOKEN_SECRET,
            "namespace": team_ns,
            # What helm stamps on what it installs; helm refuses to take over a Secret without it.
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "tokenbudget", "meta.helm.sh/release-namespace": release_ns},
        },
        "stringData": {names.ADMIN_TOKEN_SECRET_KEY: "kept-token"},
    }
    kube.kubectl("create", "-f", "-", input=json.dumps(made_by_the_release))
    new_ns = fresh_namespace(kube, "team-chart-new")
    try:
        live = ("--dry-run=server", "--kubeconfig", str(kube.kubeconfig))
        own_tls = VARIANTS["own-tls"]
        text = render(
            helm,
            *own_tls,
            f"sidecarAdminToken.namespaces={{{team_ns},{new_ns}}}",
            f"sidecarAdminToken.value={TOKEN}",
            namespace=release_ns,
            extra=live,
        )
        tokens = {
            o["metadata"]["namespace"]: base64.b64decode(o["data"]["token"]).decode()
            for o in documents(text)
            if o["kind"] == "Secret"
        }
        assert tokens == {team_ns: "kept-token", new_ns: TOKEN}
        alone = render(helm, *own_tls, f"sidecarAdminToken.namespaces={{{team_ns}}}", namespace=release_ns, extra=live)
        assert [o["data"]["token"] for o in documents(alone) if o["kind"] == "Secret"] == [
            base64.b64encode(b"kept-token").decode()
        ]
        again = render(helm, *own_tls, f"sidecarAdminToken.namespaces={{{team_ns}}}", namespace=release_ns, extra=live)
        assert alone == again
    finally:
        kube.kubectl("delete", "namespace", new_ns, "--ignore-not-found", "--wait=false", check=False)
