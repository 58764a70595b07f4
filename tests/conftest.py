"""Shared fixtures. `kube` is a real etcd + kube-apiserver (see controlplane.py), started once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from controlplane import BinariesUnavailable, ControlPlane, resolve_bin_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBE_FIXTURES = frozenset({"kube", "kube_controllers", "kube_bin_dir"})
_BIN_DIR = pytest.StashKey["Path | str"]()  # the binaries' directory, or why there is none


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kube: needs the real control plane (etcd + kube-apiserver)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using a control-plane fixture, so `-m "not kube"` leaves them all out."""
    for item in items:
        if KUBE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kube)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Find (on a fresh machine: build, ≈ 7 min) the binaries before any test runs, outside test timeouts."""
    if any(item.get_closest_marker("kube") for item in session.items):
        _find_bin_dir(session.config)


def _find_bin_dir(config: pytest.Config) -> Path | str:
    if _BIN_DIR not in config.stash:
        try:
            config.stash[_BIN_DIR] = resolve_bin_dir(REPO_ROOT)
        except BinariesUnavailable as exc:
            config.stash[_BIN_DIR] = str(exc)
    return config.stash[_BIN_DIR]


@pytest.fixture(scope="session")
def kube_bin_dir(pytestconfig: pytest.Config) -> Path:
    """Where kube-apiserver, etcd and kubectl are. Missing: skipped locally, but a failure in CI."""
    found = _find_bin_dir(pytestconfig)
    if isinstance(found, Path):
        return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI must not skip control-plane tests: {found}", pytrace=False)
    pytest.skip(f"control-plane binaries unavailable: {found}")


@pytest.fixture(scope="session")
def kube(kube_bin_dir: Path) -> Iterator[ControlPlane]:
    """A started control plane with crds/*.yaml applied and Established."""
    plane = ControlPlane(kube_bin_dir)
    try:
        plane.start()
        plane.apply_crds(REPO_ROOT / "crds")
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube_controllers(kube: ControlPlane) -> ControlPlane:
    """The same control plane with kube-controller-manager running (stopped with it)."""
    kube.start_controller_manager()
    return kube
