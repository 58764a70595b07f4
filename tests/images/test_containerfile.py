"""images/Containerfile (Docker, podman) and scripts/images.sh (no daemon) install the same things.

No Docker engine here to build the Containerfile, so the two are compared by what they declare, per image:
the Debian packages on top of the base, the pip requirement and its constraints file, pip's version, the
environment, the user, the entrypoint and the OCI label keys. Change one without the other and this fails.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (REPO_ROOT / "scripts" / "images.sh").read_text()
CONTAINERFILE = (REPO_ROOT / "images" / "Containerfile").read_text()
TARGETS = ("sidecar", "operator")


def script_var(name: str) -> str:
    match = re.search(rf"^{name}=(\(.*?\)|'.*?'|\S+)", SCRIPT, re.M)
    assert match, f"{name} not set in scripts/images.sh"
    return match.group(1).strip("()'")


def script_image(target: str) -> dict[str, object]:
    """What images.sh puts in one image, from its variables and its build function."""
    env = {"PATH": f"{script_var('VENV')}/bin:/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1"}
    if target != "operator":
        env["TIKTOKEN_CACHE_DIR"] = script_var("TIKTOKEN_DIR")
    call = re.search(rf"^\s+{target}\) build_python_image {target} \"\$(\w+)\" (\S+) (\S+) ;;", SCRIPT, re.M)
    assert call, f"no build_python_image call for {target}"
    labels = set(re.findall(r'--label "([\w.]+)=', SCRIPT.split("build_python_image()")[1].split("\n}\n")[0]))
    return {
        "debs": sorted(script_var("RUNTIME_DEBS").split()),
        "requirement": script_var(call.group(1)),
        "constraints": call.group(2),
        "pip": script_var("PIP_VERSION"),
        "env": env,
        "user": f"{script_var('UID_GID')}:{script_var('UID_GID')}",
        "entrypoint": call.group(3),
        "labels": labels - {"io.tokenbudget.sbom"},  # the SBOM file is written by images.sh only
    }


def containerfile_stage(name: str) -> str:
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", CONTAINERFILE, re.M | re.S)
    assert match, f"no stage {name} in images/Containerfile"
    return match.group(1).replace("\\\n", " ")


def containerfile_image(target: str) -> dict[str, object]:
    base, stage = containerfile_stage("base"), containerfile_stage(target)
    debs = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", base)
    pip = re.search(r"pip-([\d.]+)-py3-none-any\.whl/pip install .*?-c /tmp/images/(\S+) (\S+)", stage)
    env_line = re.search(r"^ENV (.*)$", stage, re.M)
    entrypoint = re.search(r'^ENTRYPOINT \["([^"]+)"\]', stage, re.M)
    user = re.search(r"^USER (\S+)", stage, re.M)
    assert debs, "no apt-get install in the base stage"
    assert pip, f"no pip install in stage {target}"
    assert env_line, f"no ENV in stage {target}"
    assert entrypoint, f"no ENTRYPOINT in stage {target}"
    assert user, f"no USER in stage {target}"
    env = dict(item.split("=", 1) for item in shlex.split(env_line.group(1)))
    return {
        "debs": sorted(debs.group(1).split()),
        "requirement": pip.group(3),
        "constraints": pip.group(2),
        "pip": pip.group(1),
        "env": env,
        "user": user.group(1),
        "entrypoint": entrypoint.group(1),
        "labels": set(re.findall(r"(org\.opencontainers\.image\.[\w.]+)=", stage)),
    }


@pytest.mark.parametrize("target", TARGETS)
def test_the_containerfile_installs_what_the_build_script_installs(target: str) -> None:
    assert containerfile_image(target) == script_image(target)


def test_both_download_the_same_pip_and_both_constraint_files() -> None:
    wheels = containerfile_stage("wheels")
    assert f'"pip=={script_var("PIP_VERSION")}"' in wheels
    for target in TARGETS:
        assert f"/src/images/requirements-{target}.txt" in wheels


@pytest.mark.parametrize("target", TARGETS)
def test_the_constraints_pin_every_dependency_exactly(target: str) -> None:
    lines = [line for line in (REPO_ROOT / "images" / f"requirements-{target}.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[\w.+!-]+", line) for line in lines), lines
    assert not [line for line in lines if line.startswith("tokenbudget==")], "the project is built, not pinned"
