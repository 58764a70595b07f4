"""Prometheus and promtool from Debian's packages (scripts/prometheus-deps.sh installs them, idempotently).

Found (or installed) once per session, outside the tests' timeouts; missing ones skip these tests locally and
fail them in CI, as the control plane and the real-node tier do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
_FOUND = pytest.StashKey["dict[str, Path] | str"]()  # the binaries, or why there are none


def _prepare() -> dict[str, Path] | str:
    deps = subprocess.run([str(REPO_ROOT / "scripts" / "prometheus-deps.sh")], capture_output=True, text=True,
                          check=False, timeout=600)
    if deps.returncode != 0:
        return f"scripts/prometheus-deps.sh failed: {deps.stderr[-2000:]}"
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        return f"not on PATH after scripts/prometheus-deps.sh: {', '.join(missing)}"
    return {name: Path(path) for name, path in found.items() if path is not None}


def pytest_collection_finish(session: pytest.Session) -> None:
    here = Path(__file__).parent
    if any(Path(item.path).is_relative_to(here) for item in session.items) and _FOUND not in session.config.stash:
        session.config.stash[_FOUND] = _prepare()


@pytest.fixture(scope="session")
def prometheus_bins(pytestconfig: pytest.Config) -> dict[str, Path]:
    """{"prometheus": path, "promtool": path}. Missing: skipped locally, a failure in CI."""
    found = pytestconfig.stash.get(_FOUND, None)
    if found is None:
        found = pytestconfig.stash[_FOUND] = _prepare()
    if isinstance(found, dict):
        return found
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI must not skip the Prometheus tests: {found}", pytrace=False)
    pytest.skip(f"Prometheus unavailable: {found}")
