"""The operator's own webhook CA (TLS source CASecret, the chart's default) against a real kube-apiserver.

As the chart installs it: the install makes an empty Secret `tokenbudget-webhook-ca` and the
MutatingWebhookConfiguration without a caBundle; the operator runs as the ServiceAccount of deploy/rbac.yaml
(get/patch of that Secret and that configuration, by name). Here the configuration points at a loopback URL
(no cluster network) and fails closed (failurePolicy Fail), so a TLS error shows as a refused pod.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane, KubectlError, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from operator_harness import OPERATOR_NAMESPACE, OperatorProcess, namespace, service_account_kubeconfig
from test_webhook_apiserver import create_pod, served_certificate, sidecar_of

from tokenbudget_api import names
from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.injector.certs import new_ca
from tokenbudget_operator.injector.webhookconfig import mutating_webhook_configuration

REPO_ROOT = Path(__file__).resolve().parents[2]
RBAC = REPO_ROOT / "deploy" / "rbac.yaml"
CHECK_SCRIPT = REPO_ROOT / "charts" / "tokenbudget" / "files" / "webhook_check.py"  # the helm test hook's
CA_NS = "tb-webhook-ca"
CONFIG = names.WEBHOOK_CONFIGURATION  # the chart's name: the RBAC allows this one only
SECRET = names.WEBHOOK_CA_SECRET
STATE: dict[str, Any] = {}  # shared by the ordered tests of this module


def install(kube: ControlPlane, port: int) -> None:
    """What the chart makes: the empty CA Secret and the configuration without caBundle (here: only CA_NS)."""
    kube.kubectl("delete", "secret", SECRET, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")
    kube.kubectl("create", "secret", "generic", SECRET, "-n", OPERATOR_NAMESPACE)
    settings = OperatorSettings(namespace=OPERATOR_NAMESPACE, failure_policy="Fail")  # type: ignore[arg-type]
    body = mutating_webhook_configuration(settings, {"url": f"https://127.0.0.1:{port}/{names.WEBHOOK_ID}"})
    body["metadata"]["name"] = CONFIG
    for hook in body["webhooks"]:  # never call it for the other modules' namespaces
        hook["namespaceSelector"]["matchExpressions"].append(
            {"key": names.NAMESPACE_NAME_LABEL, "operator": "In", "values": [CA_NS]}
        )
    kube.kubectl("apply", "-f", "-", input=json.dumps(body))


def operator(
    kube: ControlPlane, workdir: Path, name: str, port: int, kubeconfig: Path, **timing: str
) -> OperatorProcess:
    proc = OperatorProcess(
        kube, workdir, name,
        webhook_port=str(port), webhook_url=f"https://127.0.0.1:{port}",
        webhook_configuration_name=CONFIG, webhook_config_owner="Install", tls_source="CASecret",
        failure_policy="Fail", tls_reload_interval_s="0.5", **timing,
    )  # fmt: skip
    proc.env["KUBECONFIG"] = str(kubeconfig)
    return proc.start()


def secret_cas(kube: ControlPlane) -> tuple[list[x509.Certificate], str]:
    body = json.loads(kube.kubectl("get", "secret", SECRET, "-n", OPERATOR_NAMESPACE, "-o", "json").stdout)
    pem = base64.b64decode((body.get("data") or {}).get("ca.crt", ""))
    return (x509.load_pem_x509_certificates(pem) if pem else []), body["metadata"]["resourceVersion"]


def configuration(kube: ControlPlane) -> dict[str, Any]:
    got = kube.kubectl("get", "mutatingwebhookconfiguration", CONFIG, "-o", "json", "--show-managed-fields")
    body: dict[str, Any] = json.loads(got.stdout)
    return body


def ca_bundles(kube: ControlPlane) -> list[bytes]:
    return [base64.b64decode(h["clientConfig"].get("caBundle", "")) for h in configuration(kube)["webhooks"]]


def helm_test_script(port: int, ca_file: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "WEBHOOK_HOST": f"{names.WEBHOOK_SERVICE}.{OPERATOR_NAMESPACE}.svc",  # verified while connecting to:
        "WEBHOOK_ADDRESS": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
        "WEBHOOK_PATH": f"/{names.WEBHOOK_ID}",
        "CA_FILE": str(ca_file),
        "NAMESPACE": OPERATOR_NAMESPACE,
    }
    return subprocess.run(
        [sys.executable, str(CHECK_SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def leaf_fields(fields: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The field paths a managedFields entry (fieldsV1) sets; "." (a list element's own entry) left out."""
    found: list[tuple[str, ...]] = []
    for key, sub in fields.items():
        if key == ".":
            continue
        found += leaf_fields(sub, (*path, key)) if sub else [(*path, key)]
    return found


def pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


@pytest.fixture(scope="module")
def setup(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("webhook-ca")
    with contextlib.suppress(KubectlError):
        kube.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    namespace(kube, CA_NS, enabled=True, secret=True)
    port = free_port()
    install(kube, port)
    kubeconfig = service_account_kubeconfig(kube, workdir, RBAC)
    running: list[OperatorProcess] = []
    try:
        yield {"workdir": workdir, "port": port, "kubeconfig": kubeconfig, "running": running}
    finally:
        for proc in running:
            proc.stop()
        kube.kubectl("delete", "mutatingwebhookconfiguration", CONFIG, "--ignore-not-found", check=False)
        kube.kubectl("delete", "secret", SECRET, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", check=False)
        for kind, name in (("configmap", "tokenbudget-usage-state"), ("lease", "tokenbudget-operator")):
            kube.kubectl("delete", kind, name, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", check=False)
        kube.kubectl("delete", "-f", str(RBAC), "--ignore-not-found", check=False)
        kube.kubectl("delete", "namespace", CA_NS, "--ignore-not-found", "--wait=false", check=False)


def test_the_operator_fills_the_ca_secret_sets_the_ca_bundle_and_the_apiserver_calls_it(
    kube: ControlPlane, setup: dict[str, Any]
) -> None:
    assert ca_bundles(kube) == [b""], "the install's configuration starts without a caBundle"
    first = operator(kube, setup["workdir"], "ca-first", setup["port"], setup["kubeconfig"])
    setup["running"].append(first)
    cas, version = secret_cas(kube)
    assert len(cas) == 1
    assert ca_bundles(kube) == [pem(cas)]
    STATE["ca"], STATE["version"] = cas, version
    STATE["leaf"] = served_certificate(setup["port"], pem(cas).decode())  # verified against that CA

    calls = first.webhook_calls()
    pod, _ = create_pod(kube, "with-own-ca", CA_NS)
    assert sidecar_of(pod) is not None
    assert first.webhook_calls() == calls + 1
    # Only the caBundle is the operator's: a GitOps diff of the install's fields shows nothing else.
    owned = {e["manager"]: e for e in configuration(kube)["metadata"]["managedFields"]}
    assert set(owned) == {"kubectl-client-side-apply", "tokenbudget-operator"}, set(owned)
    mine = leaf_fields(owned["tokenbudget-operator"]["fieldsV1"])
    assert mine
    assert all(path[-2:] == ("f:clientConfig", "f:caBundle") for path in mine), mine


def test_a_second_replica_and_a_restart_reuse_the_ca(kube: ControlPlane, setup: dict[str, Any]) -> None:
    workdir, kubeconfig = setup["workdir"], setup["kubeconfig"]
    second_port = free_port()
    second = operator(kube, workdir, "ca-second", second_port, kubeconfig)
    setup["running"].append(second)
    # Its own server certificate, from the same CA; the Secret was not written again.
    assert served_certificate(second_port, pem(STATE["ca"]).decode()) != STATE["leaf"]
    assert secret_cas(kube) == (STATE["ca"], STATE["version"])

    first = setup["running"].pop(0)
    first.stop()
    restarted = operator(kube, workdir, "ca-restarted", setup["port"], kubeconfig)
    setup["running"].insert(0, restarted)
    assert secret_cas(kube) == (STATE["ca"], STATE["version"])
    assert ca_bundles(kube) == [pem(STATE["ca"])]
    leaf = served_certificate(setup["port"], pem(STATE["ca"]).decode())
    assert leaf != STATE["leaf"]
    pod, _ = create_pod(kube, "after-restart", CA_NS)
    assert sidecar_of(pod) is not None
    assert restarted.webhook_calls() == 1

    # The chart's `helm test` script, against this operator: verified against the Secret's CA it passes,
    # against another CA it fails.
    ca_file, other = setup["workdir"] / "ca.crt", setup["workdir"] / "other-ca.crt"
    ca_file.write_bytes(pem(STATE["ca"]))
    other.write_bytes(new_ca(valid_for=dt.timedelta(days=1)).cert_pem)
    assert "allowed, unchanged" in helm_test_script(setup["port"], ca_file).stdout
    assert restarted.admissions("Skip", "ExcludedNamespace", dry_run=True) == 1
    failed = helm_test_script(setup["port"], other)
    assert failed.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in failed.stderr
    for proc in setup["running"]:
        proc.stop()
    setup["running"].clear()


def test_ca_and_certificate_rotation_swap_without_a_failed_admission(kube: ControlPlane, setup: dict[str, Any]) -> None:
    """A CA living 30 s (a new one joins 18 s before its end), certificates living 10 s: over 45 s, four CAs
    and several certificates take turns while pods are created without pause against failurePolicy Fail.
    (Margins of seconds, not less: a round of the operator may wait on two shared cores.)"""
    kube.kubectl("delete", "secret", SECRET, "-n", OPERATOR_NAMESPACE)
    kube.kubectl("create", "secret", "generic", SECRET, "-n", OPERATOR_NAMESPACE)
    rotating = operator(
        kube, setup["workdir"], "ca-rotating", setup["port"], setup["kubeconfig"],
        ca_validity_s="30", ca_renew_before_s="18", cert_validity_s="10", cert_renew_before_s="5",
        ca_propagation_s="2",
    )  # fmt: skip
    setup["running"].append(rotating)
    first_ca = secret_cas(kube)[0][0]
    seen_cas: set[bytes] = set()
    leaves: set[bytes] = set()
    admitted, failures = 0, []
    began = time.monotonic()
    while time.monotonic() - began < 45:
        try:
            pod, _ = create_pod(kube, "rotating", CA_NS, "--dry-run=server")
            assert sidecar_of(pod) is not None, "admitted without the sidecar"
            admitted += 1
        except (KubectlError, AssertionError) as exc:
            failures.append(f"{time.monotonic() - began:.1f} s: {exc}"[:400])
        cas = secret_cas(kube)[0]
        seen_cas |= {c.fingerprint(hashes.SHA256()) for c in cas}
        leaves.add(served_certificate(setup["port"], pem(cas).decode()))
    assert not failures, f"{len(failures)} failed admissions of {admitted + len(failures)}:\n" + "\n".join(failures)
    final = secret_cas(kube)[0]
    assert len(seen_cas) >= 3, f"{len(seen_cas)} CAs over 45 s"
    assert first_ca not in final, "the expired first CA is still in the Secret"
    assert ca_bundles(kube) == [pem(final)]
    assert len(leaves) >= 4, len(leaves)
    assert rotating.samples("tokenbudget_webhook_tls_reloads_total")[()] >= 4
    print(f"\nrotation: {admitted} admissions, 0 failed; {len(seen_cas)} CAs and {len(leaves)} certificates served")


def test_an_operator_that_owns_the_configuration_writes_it_with_the_secrets_ca(
    kube: ControlPlane, setup: dict[str, Any]
) -> None:
    """Chart-less (WEBHOOK_CONFIG_OWNER=Operator): the whole configuration is the operator's, its caBundle the
    Secret's CA set. As the admin: creating webhook configurations is beyond deploy/rbac.yaml on purpose."""
    for proc in setup["running"]:
        proc.stop()
    setup["running"].clear()
    kube.kubectl("delete", "mutatingwebhookconfiguration", CONFIG)
    kube.kubectl("delete", "secret", SECRET, "-n", OPERATOR_NAMESPACE)
    kube.kubectl("create", "secret", "generic", SECRET, "-n", OPERATOR_NAMESPACE)
    port = free_port()
    owner = OperatorProcess(
        kube, setup["workdir"], "ca-owner", webhook_port=str(port), webhook_url=f"https://127.0.0.1:{port}",
        webhook_configuration_name=CONFIG, webhook_config_owner="Operator", tls_source="CASecret",
        tls_reload_interval_s="0.5",
    ).start()  # fmt: skip
    setup["running"].append(owner)
    cas, _ = secret_cas(kube)
    assert len(cas) == 1
    deadline = time.monotonic() + 10
    while ca_bundles(kube) != [pem(cas)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ca_bundles(kube) == [pem(cas)]
    pod, _ = create_pod(kube, "owner-written", CA_NS)
    assert sidecar_of(pod) is not None
