"""Fixtures of the real-node tier: the project's images, a control plane, and a kubelet node running them.

Prerequisites (root, containerd/runc/CNI/buildah from Debian: scripts/realnode-deps.sh; kubelet and
kube-scheduler: scripts/envtest.sh; helm: scripts/helm.sh; the images: scripts/images.sh) are found before
any test runs, outside the tests' timeouts. A missing one skips the tier locally and fails it in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from controlplane import BinariesUnavailable, resolve_bin_dir
from kubenode import REPO_ROOT, Cluster, NodePlane, RealNode, image_ref, missing_prerequisites, one_node_per_machine

IMAGE_TARGETS = ("sidecar", "operator", "testapp", "pause")
_READY = pytest.StashKey["dict[str, Path] | str"]()  # archives by target, or why there are none


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _prepare() -> dict[str, Path] | str:
    """Install the Debian packages, find the binaries, build (or reuse) the images. A str says what failed."""
    deps = subprocess.run([str(REPO_ROOT / "scripts" / "realnode-deps.sh")], capture_output=True, text=True,
                          check=False, timeout=900)
    if deps.returncode != 0:
        return f"scripts/realnode-deps.sh failed: {deps.stderr[-2000:]}"
    try:
        bin_dir = resolve_bin_dir(REPO_ROOT)
    except BinariesUnavailable as exc:
        return str(exc)
    if missing := missing_prerequisites(bin_dir):
        return "missing: " + ", ".join(missing)
    built = subprocess.run([str(REPO_ROOT / "scripts" / "images.sh"), *IMAGE_TARGETS], capture_output=True,
                           text=True, check=False, timeout=2400, env={**os.environ, "PYTHON": sys.executable})
    if built.returncode != 0:
        return f"scripts/images.sh failed ({built.returncode}):\n{built.stderr[-3000:]}"
    out = Path(built.stdout.strip().splitlines()[-1])
    return {target: out / f"{target}.oci.tar" for target in IMAGE_TARGETS}


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.get_closest_marker("realnode") for item in session.items) and _READY not in session.config.stash:
        session.config.stash[_READY] = _prepare()


@pytest.fixture(scope="session")
def realnode_images(pytestconfig: pytest.Config) -> dict[str, Path]:
    found = pytestconfig.stash.get(_READY, None)
    if found is None:
        found = pytestconfig.stash[_READY] = _prepare()
    if isinstance(found, dict):
        return found
    if _in_ci():
        pytest.fail(f"CI must not skip the real-node tier: {found}", pytrace=False)
    pytest.skip(f"real node unavailable: {found}")


def _helm_bin() -> Path | None:
    found = os.environ.get("HELM_BIN")
    if not found:
        done = subprocess.run([str(REPO_ROOT / "scripts" / "helm.sh")], capture_output=True, text=True,
                              env={**os.environ, "GOPROXY": "off"}, check=False, timeout=120)
        lines = done.stdout.strip().splitlines()
        found = lines[-1] if done.returncode == 0 and lines else None
    return Path(found) if found and Path(found).is_file() else None


@pytest.fixture(scope="module")
def cluster(realnode_images: dict[str, Path]) -> Iterator[Cluster]:
    """etcd + kube-apiserver + controller manager + scheduler + a kubelet on containerd, images imported."""
    helm = _helm_bin()
    if helm is None:
        if _in_ci():
            pytest.fail("CI must not skip the real-node tier: helm unavailable (scripts/helm.sh)", pytrace=False)
        pytest.skip("helm unavailable: run scripts/helm.sh or set HELM_BIN")
    with one_node_per_machine():
        yield from _cluster(realnode_images, helm)


def _cluster(realnode_images: dict[str, Path], helm: Path) -> Iterator[Cluster]:
    plane = NodePlane(resolve_bin_dir(REPO_ROOT))
    node: RealNode | None = None
    try:
        plane.start()
        plane.start_controller_manager()
        node = RealNode(plane, pause_ref=image_ref("pause")).start()
        for target, archive in realnode_images.items():
            node.import_image(archive, image_ref(target))
        node.start_kubelet()
        yield Cluster(plane, node, helm, realnode_images)
    finally:
        try:
            if node is not None:
                node.stop()
        finally:
            plane.stop()
    leftovers = node.leftovers() if node is not None else []
    assert not leftovers, f"the node left things behind: {leftovers}"
