"""The test control plane itself: real binaries answer, real controllers act, and nothing outlives a test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import K8S_VERSION, ControlPlane
from kubernetes import client, config

pytestmark = pytest.mark.kube

TESTS_DIR = Path(__file__).resolve().parent


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    """Whether pid runs. A zombie counts as gone: in a container PID 1 may never reap orphans."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _items(kube: ControlPlane, *args: str) -> list[dict[str, Any]]:
    """The items of a `kubectl get ... -o json` list."""
    items: list[dict[str, Any]] = json.loads(kube.kubectl("get", *args, "-o", "json").stdout)["items"]
    return items


def _owners(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(ref["kind"], ref["name"]) for ref in obj["metadata"].get("ownerReferences", [])]


def _wait_gone(pids: dict[str, int], timeout: float) -> dict[str, int]:
    """The pids still alive after up to timeout seconds."""
    deadline = time.monotonic() + timeout
    while (left := {n: p for n, p in pids.items() if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_the_apiserver_answers_kubectl_version_with_the_pinned_server_version(kube: ControlPlane) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == K8S_VERSION
    assert version["clientVersion"]["gitVersion"] == K8S_VERSION


def test_the_kubeconfig_verifies_the_serving_certificate_instead_of_skipping_tls(kube: ControlPlane) -> None:
    cluster = yaml.safe_load(kube.kubeconfig.read_text())["clusters"][0]["cluster"]
    assert kube.ca_file is not None, "kube-apiserver wrote no verifiable apiserver.crt"
    assert cluster["certificate-authority"] == str(kube.ca_file)
    assert "insecure-skip-tls-verify" not in cluster


def test_a_configmap_round_trips_through_kubectl_apply_and_get(kube: ControlPlane) -> None:
    name = _name("roundtrip")
    data = {"greeting": "hello", "multiline": "a\nb\n", "unicode": "tokens ≤ budget"}
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    kube.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(manifest))
    try:
        stored = json.loads(kube.kubectl("get", "configmap", name, "-n", "default", "-o", "json").stdout)
        assert stored["data"] == data
        assert stored["metadata"]["uid"]
    finally:
        kube.kubectl("delete", "configmap", name, "-n", "default", "--wait=false")


def test_the_official_python_client_loads_the_kubeconfig_and_lists_namespaces(kube: ControlPlane) -> None:
    namespace = _name("pyclient")
    kube.kubectl("create", "namespace", namespace)
    api_client = config.new_client_from_config(config_file=str(kube.kubeconfig))  # type: ignore[no-untyped-call]
    api = client.CoreV1Api(api_client)
    try:
        names = {ns.metadata.name for ns in api.list_namespace().items if ns.metadata}
        assert {"default", "kube-system", namespace} <= names
    finally:
        api_client.close()
        kube.kubectl("delete", "namespace", namespace, "--wait=false")


def test_apply_crds_waits_until_a_crd_is_established_and_serves_its_kind(kube: ControlPlane, tmp_path: Path) -> None:
    group = f"{uuid.uuid4().hex[:8]}.tests.tokenbudget.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}},
                }}},
            }],
        },
    }  # fmt: skip
    (tmp_path / "widgets.yaml").write_text(yaml.safe_dump(crd))
    (tmp_path / "notes.txt").write_text("not a manifest")

    assert kube.apply_crds(tmp_path) == [f"widgets.{group}"]
    widget = {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 0}}
    rejected = kube.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(widget), check=False)
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr
    widget["spec"] = {"size": 3}
    kube.kubectl("apply", "-n", "default", "-f", "-", input=json.dumps(widget))
    kube.kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


def test_apply_crds_of_an_empty_or_missing_directory_applies_nothing(kube: ControlPlane, tmp_path: Path) -> None:
    assert kube.apply_crds(tmp_path) == []
    assert kube.apply_crds(tmp_path / "absent") == []


def test_a_deployment_of_two_replicas_gets_two_pods_from_the_real_controller_manager(
    kube_controllers: ControlPlane,
) -> None:
    kube = kube_controllers
    namespace, name = _name("deploy"), "app"
    kube.kubectl("create", "namespace", namespace)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }
    try:
        kube.kubectl("apply", "-f", "-", input=json.dumps(deployment))
        pods: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while len(pods) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            pods = _items(kube, "pods", "-n", namespace, "-l", f"app={name}")
        assert len(pods) == 2, f"controller manager made {len(pods)} pods in 30 s\n{kube.log_tail()}"

        replicasets = _items(kube, "replicasets", "-n", namespace)
        assert [_owners(rs) for rs in replicasets] == [[("Deployment", name)]]
        replicaset = replicasets[0]["metadata"]["name"]
        assert [_owners(pod) for pod in pods] == [[("ReplicaSet", replicaset)]] * 2
        assert [pod["status"]["phase"] for pod in pods] == ["Pending"] * 2  # no scheduler, no kubelet
    finally:
        kube.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_stopped_control_plane_leaves_no_process_or_directory_behind(kube_bin_dir: Path) -> None:
    plane = ControlPlane(kube_bin_dir)
    try:
        plane.start()
        plane.start_controller_manager()
        pids = plane.pids
        assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager"}
        assert all(_alive(pid) for pid in pids.values())
        assert plane.kubectl("get", "--raw", "/readyz").stdout == "ok"
        print(f"ControlPlane.start() to ready: {plane.startup_seconds:.2f} s")
    finally:
        plane.stop()
    assert _wait_gone(pids, timeout=0) == {}
    assert plane.pids == {}
    assert not plane.workdir.exists()
    plane.stop()  # idempotent


def test_a_control_plane_whose_test_process_is_killed_leaves_no_process_behind(
    kube_bin_dir: Path, tmp_path: Path
) -> None:
    pids_file = tmp_path / "pids.json"
    script = textwrap.dedent(
        """
        import json, os, sys, time
        from pathlib import Path
        from controlplane import ControlPlane

        plane = ControlPlane(Path(sys.argv[1]), workdir=Path(sys.argv[2])).start()
        Path(sys.argv[3] + ".tmp").write_text(json.dumps(plane.pids))
        os.rename(sys.argv[3] + ".tmp", sys.argv[3])
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    with (tmp_path / "child.log").open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(kube_bin_dir), str(tmp_path / "plane"), str(pids_file)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 90
        while not pids_file.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids_file.exists(), (tmp_path / "child.log").read_text()
        pids = json.loads(pids_file.read_text())
        assert set(pids) == {"etcd", "kube-apiserver"}
        assert all(_alive(pid) for pid in pids.values())
        child.send_signal(signal.SIGKILL)  # no finally, no atexit: only the kernel's parent-death signal
        child.wait()
        assert _wait_gone(pids, timeout=10) == {}
    finally:
        child.kill()
        child.wait()
        for pid in pids.values():  # a failing run must not leak either
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
