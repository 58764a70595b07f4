"""The injection webhook against a real kube-apiserver (and kube-controller-manager), the operator a real process.

The operator runs as `python -m tokenbudget_operator` with a loopback webhook URL, writes its own
MutatingWebhookConfiguration, and the apiserver calls it over TLS. Whether the apiserver called at all is read
from the operator's /metrics (tokenbudget_webhook_requests_total). Pods stay Pending: there is no kubelet.

The module's operator is stopped by the last test (failurePolicy Ignore with nobody listening), so that test
stays last in the file.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane, KubectlError
from operator_harness import CONFIG_NAME, OPERATOR_NAMESPACE, OperatorProcess, namespace

from tokenbudget_api import names
from tokenbudget_operator.injector import certs

REPO_ROOT = Path(__file__).resolve().parents[2]
INJECTED_NS = "tb-webhook-injected"  # labelled enabled, has the admin token Secret
PLAIN_NS = "tb-webhook-plain"  # not labelled
NO_SECRET_NS = "tb-webhook-nosecret"  # labelled enabled, no admin token Secret
DEPLOY_NS = "tb-webhook-deploy"  # labelled enabled, for the Deployment
ROTATE_NS = "tb-webhook-rotate"  # served by the second operator only (certificate rotation)
LATE_NS = "tb-webhook-late"  # labelled only after the operator started


def pod_manifest(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "chat", **labels}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/chat:1.4.2",
                    "env": [{"name": "OPENAI_BASE_URL", "value": "https://gateway.example.com/v1"}],
                }
            ],
            **spec,
        },
    }


def create_pod(kube: ControlPlane, name: str, ns: str, *args: str, **spec: Any) -> tuple[dict[str, Any], str]:
    """kubectl create a pod; returns the object the apiserver answered with, and kubectl's stderr (warnings)."""
    done = kube.kubectl("create", "-f", "-", "-o", "json", *args, input=json.dumps(pod_manifest(name, ns, **spec)))
    pod: dict[str, Any] = json.loads(done.stdout)
    return pod, done.stderr


def stored_pod(kube: ControlPlane, name: str, ns: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads(kube.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)
    return pod


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any] | None:
    containers = [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]
    return next((c for c in containers if c["name"] == names.SIDECAR_CONTAINER), None)


def webhook_configuration(kube: ControlPlane, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(kube.kubectl("get", "mutatingwebhookconfiguration", name, "-o", "json").stdout)
    return body


@pytest.fixture(scope="module")
def operator(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator process for the module, started after its namespaces exist (its indexes list them)."""
    namespace(kube, OPERATOR_NAMESPACE, enabled=True, secret=True)  # labelled, yet excluded by name
    namespace(kube, INJECTED_NS, enabled=True, secret=True)
    namespace(kube, PLAIN_NS, enabled=False, secret=True)
    namespace(kube, NO_SECRET_NS, enabled=True, secret=False)
    namespace(kube, DEPLOY_NS, enabled=True, secret=True)
    proc = OperatorProcess(
        kube, tmp_path_factory.mktemp("operator"), "operator", excluded_namespaces=json.dumps([ROTATE_NS])
    )
    try:
        yield proc.start()
    finally:
        proc.stop()
        # Leave the shared control plane as other modules expect it: no webhook, no labelled namespaces.
        kube.kubectl("delete", "mutatingwebhookconfiguration", CONFIG_NAME, "--ignore-not-found", check=False)
        kube.kubectl("label", "namespace", OPERATOR_NAMESPACE, f"{names.INJECTION_LABEL}-", check=False)
        test_namespaces = (INJECTED_NS, PLAIN_NS, NO_SECRET_NS, DEPLOY_NS, ROTATE_NS, LATE_NS)
        kube.kubectl("delete", "namespace", "--ignore-not-found", "--wait=false", *test_namespaces, check=False)


def test_the_apiserver_calls_the_webhook_over_tls_and_stores_the_injected_pod(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    calls = operator.webhook_calls()
    answered, _ = create_pod(kube, "chat", INJECTED_NS)
    assert operator.webhook_calls() == calls + 1
    pod = stored_pod(kube, "chat", INJECTED_NS)
    assert pod["spec"] == answered["spec"]
    # v1.37: a native sidecar, first init container; the apiserver validated and stored it.
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == names.SIDECAR_CONTAINER
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["metadata"]["annotations"][names.INJECTED_ANNOTATION] == names.INJECTION_CONTRACT_VERSION
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env[names.OPENAI_BASE_URL_ENV] == "https://gateway.example.com/v1"  # the pod's own value kept
    assert env[names.ANTHROPIC_BASE_URL_ENV] == names.sidecar_base_url("anthropic")
    assert env[names.GEMINI_BASE_URL_ENV] == names.sidecar_base_url("gemini")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[names.SIDECAR_ADMIN_TOKEN_VOLUME]["secret"]["secretName"] == names.ADMIN_TOKEN_SECRET

    # The configuration the apiserver used: TLS to a loopback URL, trusted through our caBundle only.
    (hook,) = webhook_configuration(kube, CONFIG_NAME)["webhooks"]
    assert hook["clientConfig"]["url"] == f"https://127.0.0.1:{operator.webhook_port}/{names.WEBHOOK_ID}"
    assert (hook["failurePolicy"], hook["timeoutSeconds"], hook["sideEffects"]) == ("Ignore", 5, "None")
    ca = base64.b64decode(hook["clientConfig"]["caBundle"]).decode()
    assert served_certificate(operator.webhook_port, ca)


KEY_VALUE = "sk-apiserver-test-key-4f9c2e"


def keyed_budget(ns: str) -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": "TokenBudget", "metadata": {"name": "keys", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "chat"}}, "upstreams": [
                {"name": "openai", "baseURL": "https://api.openai.com", "dialect": "OpenAI",
                 "apiKeySecretRef": {"name": "llm-keys", "key": "openai"}}]}}


def test_a_budgets_key_secret_is_mounted_into_the_sidecar_and_the_app_container_holds_no_key(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    """The operator learns of the budget from its watch; pods created after it get the Secret in the sidecar."""
    kube.kubectl("create", "secret", "generic", "llm-keys", "-n", INJECTED_NS, f"--from-literal=openai={KEY_VALUE}")
    kube.kubectl("apply", "-f", "-", input=json.dumps(keyed_budget(INJECTED_NS)))
    key_dir = f"{names.SIDECAR_UPSTREAM_KEY_DIR}/llm-keys"
    deadline = time.monotonic() + 30
    for attempt in range(300):  # until the operator's index has the budget (bounded)
        create_pod(kube, f"keyed-{attempt}", INJECTED_NS)
        pod = stored_pod(kube, f"keyed-{attempt}", INJECTED_NS)
        sidecar = sidecar_of(pod)
        assert sidecar is not None
        if any(m["mountPath"] == key_dir for m in sidecar.get("volumeMounts", [])):
            break
        assert time.monotonic() < deadline, "no pod got the key Secret mounted"
        time.sleep(0.1)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == key_dir]
    assert volumes[mount["name"]]["secret"] == {"secretName": "llm-keys", "optional": True, "defaultMode": 420,
                                                "items": [{"key": "openai", "path": "openai"}]}
    (app,) = pod["spec"]["containers"]
    assert not any(m["name"] == mount["name"] for m in app.get("volumeMounts", [])), "the key volume is sidecar-only"
    env = {e["name"]: e for e in app["env"]}
    assert env["OPENAI_API_KEY"] == {"name": "OPENAI_API_KEY", "value": names.PLACEHOLDER_API_KEY}
    assert "llm-keys" not in json.dumps(app), "nothing in the app container refers to the Secret"
    assert KEY_VALUE not in json.dumps(pod)


def served_certificate(port: int, ca_pem: str) -> bytes:
    """The DER certificate the webhook server presents, verified against ca_pem for the IP 127.0.0.1."""
    context = ssl.create_default_context(cadata=ca_pem)

    async def fetch() -> bytes:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    return asyncio.run(fetch())


def test_pods_the_webhook_would_skip_are_untouched_and_never_sent_to_it(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    calls = operator.webhook_calls()
    skipped = [
        create_pod(kube, "plain", PLAIN_NS)[0],  # namespace not opted in
        create_pod(kube, "opted-out", INJECTED_NS, labels={names.INJECTION_LABEL: names.INJECTION_DISABLED})[0],
        create_pod(kube, "own-namespace", OPERATOR_NAMESPACE)[0],  # labelled enabled, excluded by name
    ]
    assert operator.webhook_calls() == calls, "the selectors should have kept these away from the webhook"
    for pod in skipped:
        assert sidecar_of(pod) is None
        assert names.INJECTED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    # The counter does move for a pod it must see: the zero above is not a broken counter.
    create_pod(kube, "control", INJECTED_NS)
    assert operator.webhook_calls() == calls + 1


def test_a_server_side_dry_run_gets_the_injected_pod_and_stores_nothing(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    before = operator.admissions("Inject", "NamespaceOptedIn", dry_run=True)
    answered, _ = create_pod(kube, "dry", INJECTED_NS, "--dry-run=server")
    assert sidecar_of(answered) is not None
    assert operator.admissions("Inject", "NamespaceOptedIn", dry_run=True) == before + 1
    missing = kube.kubectl("get", "pod", "dry", "-n", INJECTED_NS, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


def test_a_pod_that_cannot_take_the_sidecar_is_admitted_unchanged_with_a_warning(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    pod, stderr = create_pod(kube, "on-host", INJECTED_NS, hostNetwork=True)
    assert sidecar_of(pod) is None
    assert "Warning: tokenbudget: sidecar not injected: hostNetwork" in stderr
    pod, stderr = create_pod(kube, "no-secret", NO_SECRET_NS)
    assert sidecar_of(pod) is None
    assert f"Secret '{names.ADMIN_TOKEN_SECRET}'" in stderr
    assert operator.admissions("Skip", "AdminTokenSecretMissing") == 1


def test_a_namespace_labelled_after_the_operator_started_is_injected(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    namespace(kube, LATE_NS, enabled=False, secret=True)
    assert sidecar_of(create_pod(kube, "before-label", LATE_NS)[0]) is None
    kube.kubectl("label", "namespace", LATE_NS, f"{names.INJECTION_LABEL}={names.INJECTION_ENABLED}")
    # The apiserver's selector sees the label at once; the operator's index a watch event later.
    deadline = time.monotonic() + 10
    while True:
        pod, _ = create_pod(kube, "after-label", LATE_NS, "--dry-run=server")
        if sidecar_of(pod) is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sidecar_of(pod) is not None


def test_a_deployments_pods_made_by_the_controller_manager_are_injected(
    kube_controllers: ControlPlane, operator: OperatorProcess
) -> None:
    kube = kube_controllers
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": DEPLOY_NS},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "chat"}},
            "template": {
                "metadata": {"labels": {"app": "chat"}},
                "spec": pod_manifest("unused", DEPLOY_NS)["spec"],
            },
        },
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(deployment))
    deadline = time.monotonic() + 30
    pods: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        listed = json.loads(kube.kubectl("get", "pods", "-n", DEPLOY_NS, "-l", "app=chat", "-o", "json").stdout)
        pods = listed["items"]
        if len(pods) == 2:
            break
        time.sleep(0.2)
    assert len(pods) == 2, f"the ReplicaSet made {len(pods)} pods\n{kube.log_tail()}"
    for pod in pods:
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
        sidecar = sidecar_of(pod)
        assert sidecar is not None, pod["metadata"]["name"]
        assert sidecar["restartPolicy"] == "Always"
        assert pod["metadata"]["annotations"][names.INJECTED_ANNOTATION] == names.INJECTION_CONTRACT_VERSION
    # The template itself is untouched: only pods are mutated, so `kubectl apply` sees no drift.
    stored = json.loads(kube.kubectl("get", "deployment", "chat", "-n", DEPLOY_NS, "-o", "json").stdout)
    assert sidecar_of(stored["spec"]["template"]) is None


def test_a_rotated_certificate_in_the_secret_dir_is_served_without_a_restart(
    kube: ControlPlane, operator: OperatorProcess, tmp_path: Path
) -> None:
    """A second operator in SecretDir mode, alone on its namespace: swap the files, keep injecting.

    Its namespace has a budget naming a key Secret before it starts: the webhook serves only once its index
    holds it, so the very first pod gets the Secret mounted into its sidecar."""
    namespace(kube, ROTATE_NS, enabled=True, secret=True)
    kube.kubectl("apply", "-f", "-", input=json.dumps(keyed_budget(ROTATE_NS)))
    tls_dir = tmp_path / "tls"
    second = OperatorProcess(
        kube,
        tmp_path,
        "operator-rotate",
        webhook_configuration_name=f"{CONFIG_NAME}-rotate",
        tls_source="SecretDir",
        tls_dir=str(tls_dir),
        tls_reload_interval_s="0.1",
        excluded_namespaces=json.dumps([INJECTED_NS, PLAIN_NS, NO_SECRET_NS, DEPLOY_NS, LATE_NS]),
    )
    certs.write_material(certs.generate(["127.0.0.1"]), tls_dir)
    try:
        second.start()
        first = sidecar_of(create_pod(kube, "before-rotation", ROTATE_NS)[0])
        assert first is not None
        assert f"{names.SIDECAR_UPSTREAM_KEY_DIR}/llm-keys" in {m["mountPath"] for m in first["volumeMounts"]}
        pid = second.proc.pid if second.proc else None

        rotated = certs.generate(["127.0.0.1"])  # a new CA too: the caBundle must follow
        certs.write_material(rotated, tls_dir)
        deadline = time.monotonic() + 10
        while second.samples("tokenbudget_webhook_tls_reloads_total").get((), 0.0) < 1:
            assert time.monotonic() < deadline, second.log_tail()
            time.sleep(0.1)
        # Served now: the new certificate, verified by the new CA alone.
        served = served_certificate(second.webhook_port, rotated.ca_pem.decode())
        assert served == ssl.PEM_cert_to_DER_cert(rotated.cert_pem.decode())
        deadline = time.monotonic() + 10
        while True:
            (hook,) = webhook_configuration(kube, second.config_name)["webhooks"]
            if base64.b64decode(hook["clientConfig"]["caBundle"]) == rotated.ca_pem or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == rotated.ca_pem
        assert sidecar_of(create_pod(kube, "after-rotation", ROTATE_NS)[0]) is not None
        assert second.proc is not None
        assert second.proc.pid == pid
        assert second.proc.poll() is None
    finally:
        second.stop()
        kube.kubectl("delete", "mutatingwebhookconfiguration", second.config_name, "--ignore-not-found", check=False)


# Keep last: it stops the module's operator.
def test_with_the_operator_stopped_and_failure_policy_ignore_pods_still_create(
    kube: ControlPlane, operator: OperatorProcess
) -> None:
    took = operator.stop()
    assert took < 5.0, f"the operator needed SIGKILL after {took:.1f} s\n{operator.log_tail()}"
    # The configuration stays (it is not the operator's to withdraw on shutdown) and points at nobody.
    (hook,) = webhook_configuration(kube, CONFIG_NAME)["webhooks"]
    assert hook["failurePolicy"] == "Ignore"
    began = time.monotonic()
    pod, _ = create_pod(kube, "while-down", INJECTED_NS)
    assert time.monotonic() - began < float(hook["timeoutSeconds"])
    assert sidecar_of(pod) is None
    # And the configuration really was in play: with Fail, the same creation is refused.
    kube.kubectl(
        "patch", "mutatingwebhookconfiguration", CONFIG_NAME, "--type=json",
        "-p", json.dumps([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Fail"}]),
    )  # fmt: skip
    with pytest.raises(KubectlError, match="failed calling webhook"):
        create_pod(kube, "while-down-fail", INJECTED_NS)


# -- TLS material, without a control plane --------------------------------------------------------------


def test_a_generated_certificate_verifies_for_its_ip_and_dns_names_under_its_ca() -> None:
    material = certs.generate(["tokenbudget-webhook.tokenbudget-system.svc", "127.0.0.1"])
    server = certs.server_context(material)
    client = ssl.create_default_context(cadata=material.ca_pem.decode())

    async def handshake(server_hostname: str) -> None:
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname=server_hostname)
            writer.close()
        finally:
            listener.close()

    asyncio.run(handshake("127.0.0.1"))
    asyncio.run(handshake("tokenbudget-webhook.tokenbudget-system.svc"))
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(handshake("other.example.com"))


async def test_the_secret_dir_source_notices_replaced_files(tmp_path: Path) -> None:
    certs.write_material(certs.generate(["127.0.0.1"]), tmp_path)
    source = certs.SecretDirSource(tmp_path, interval=0.02)
    first = source.current()
    waiting = asyncio.create_task(source.wait_for_change())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    renewed = certs.generate(["127.0.0.1"])
    certs.write_material(renewed, tmp_path)
    await asyncio.wait_for(waiting, timeout=2)
    assert source.current().cert_pem == renewed.cert_pem != first.cert_pem
