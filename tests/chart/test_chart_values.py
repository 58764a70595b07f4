"""The chart's values.schema.json refuses bad values before anything renders; digests, the PDB.

Strict: unknown keys (a typo such as `webhook.failurPolicy`) are refused, not ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_chart
from test_chart import by_key, documents, render

helm = test_chart.helm  # the chart tests' session fixture: HELM_BIN or the cached build

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("sets", "field"),
    [
        (("replicaz=2",), "replicaz"),
        (("webhook.failurPolicy=Fail",), "failurPolicy"),
        (("replicas=0",), "replicas"),
        (("image.pullPolicy=Sometimes",), "pullPolicy"),
        (("webhook.timeoutSeconds=60",), "timeoutSeconds"),
        (("image.digest=latest",), "digest"),
        (("operator.logLevel=TRACE",), "logLevel"),
        (("sidecarAdminToken.namespaces={Team_A}",), "namespaces"),
        (("webhook.caBundle=not base64!",), "caBundle"),
        (("imagePullSecrets[0].nam=regcred",), "imagePullSecrets"),
        # the schema's path, not only the --set text: these values are checked, not refused as unknown
        (("operator.notifications.attempts=0",), "/operator/notifications/attempts"),
        (("operator.notifications.backoffSeconds=0",), "/operator/notifications/backoffSeconds"),
        (("operator.notifications.summaryDelaySeconds=-1",), "/operator/notifications/summaryDelaySeconds"),
        (("operator.notifications.retryAfter=5",), "properties 'retryAfter' not allowed"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else v,
)
def test_bad_values_are_refused_by_the_schema_naming_the_field(helm: Path, sets: tuple[str, ...], field: str) -> None:
    with pytest.raises(AssertionError, match="schema") as refused:
        render(helm, *sets)
    assert field in str(refused.value)


def test_an_image_digest_pins_operator_and_sidecar_by_digest(helm: Path) -> None:
    docs = by_key(documents(render(helm, "image.repository=registry.example/tb", f"image.digest={DIGEST}")))
    container = docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.example/tb@{DIGEST}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TOKENBUDGET_OPERATOR_SIDECAR_IMAGE"] == f"registry.example/tb@{DIGEST}"


def test_pull_secrets_reach_the_operator_pods(helm: Path) -> None:
    docs = by_key(documents(render(helm, "imagePullSecrets[0].name=regcred")))
    spec = docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def test_a_disruption_budget_keeps_one_replica_serving_the_webhook(helm: Path) -> None:
    docs = by_key(documents(render(helm)))
    pdb = docs["PodDisruptionBudget", "tokenbudget-operator"]
    selector = docs["Deployment", "tokenbudget-operator"]["spec"]["selector"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": selector}
    # One replica: a PDB would block every node drain, so none is rendered.
    assert not any(kind == "PodDisruptionBudget" for kind, _ in by_key(documents(render(helm, "replicas=1"))))


@pytest.mark.parametrize(
    ("sets", "secret"),
    [((), "tokenbudget-webhook-ca"), (("webhook.certManager.enabled=true",), "tokenbudget-webhook-tls")],
    ids=["operator-ca", "cert-manager"],
)
def test_the_helm_test_hook_checks_the_webhook_through_its_service_with_the_ca_the_apiserver_trusts(
    helm: Path, sets: tuple[str, ...], secret: str
) -> None:
    """The script it runs is files/webhook_check.py, byte for byte (tests/injector runs it against a real
    operator); its pod is a test hook the Service and the PodDisruptionBudget never select."""
    docs = by_key(documents(render(helm, *sets)))
    pod = docs["Pod", "tokenbudget-webhook-test"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    script = (test_chart.CHART / "files" / "webhook_check.py").read_text()
    assert container["command"] == ["python3", "-c", script]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["WEBHOOK_HOST"] == f"tokenbudget-webhook.{test_chart.NS}.svc"  # the name the apiserver checks
    assert (env["WEBHOOK_PORT"], env["WEBHOOK_PATH"]) == ("443", "/inject-sidecar")
    assert env["WEBHOOK_ADDRESS"] == "$(TOKENBUDGET_WEBHOOK_SERVICE_HOST)"  # service links of the Service below
    assert pod["spec"]["volumes"][0]["secret"]["secretName"] == secret
    assert env["CA_FILE"] == pod["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] + "/ca.crt"
    service_selector = docs["Service", "tokenbudget-webhook"]["spec"]["selector"]
    assert not service_selector.items() <= pod["metadata"]["labels"].items()
    assert container["image"] == docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]


def test_the_sidecar_image_can_be_pinned_by_digest_too(helm: Path) -> None:
    ref = f"registry.example/tokenbudget-sidecar@{DIGEST}"
    docs = by_key(documents(render(helm, f"sidecar.image={ref}")))
    container = docs["Deployment", "tokenbudget-operator"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in container["env"]}["TOKENBUDGET_OPERATOR_SIDECAR_IMAGE"] == ref
