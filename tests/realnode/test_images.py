"""What `make images` (scripts/images.sh) produced: config, labels, SBOM and the baked tiktoken encodings.

That the images run, as 65532 on a read-only root filesystem, is shown by test_realnode.py on a real node.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kubenode import REPO_ROOT

pytestmark = [pytest.mark.realnode]

TIKTOKEN_FILES = {"fb374d419588a4632f3f557e76b4b70aebbca790", "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"}


def blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
    assert member is not None
    return member.read()


def image(archive: Path) -> tuple[dict[str, Any], list[str]]:
    """(image config, every path in its layers)."""
    with tarfile.open(archive) as tar:
        top = tar.extractfile("index.json")
        assert top is not None
        index = json.loads(blob(tar, json.load(top)["manifests"][0]["digest"]))
        config = json.loads(blob(tar, index["config"]["digest"]))
        paths: list[str] = []
        for layer in index["layers"]:
            data = blob(tar, layer["digest"])
            if layer["mediaType"].endswith("gzip"):
                data = gzip.decompress(data)
            with tarfile.open(fileobj=io.BytesIO(data)) as layer_tar:
                paths += layer_tar.getnames()
    return config, paths


def sbom_purls(path: Path) -> set[str]:
    return {c.get("purl", "") for c in json.loads(path.read_text())["components"]}


def extras() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return set(project.get("optional-dependencies", {}))


@pytest.mark.parametrize(("target", "entrypoint"), [("sidecar", "tokenbudget-sidecar"),
                                                     ("operator", "tokenbudget-operator")])
def test_the_image_runs_as_65532_with_oci_labels_and_its_sbom(
    realnode_images: dict[str, Path], target: str, entrypoint: str
) -> None:
    config, paths = image(realnode_images[target])
    cfg = config["config"]
    assert cfg["User"] == "65532:65532"
    assert cfg["Entrypoint"] == [entrypoint]
    labels = cfg["Labels"]
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert "usr/share/doc/tokenbudget/sbom.cdx.json" in {p.lstrip("./") for p in paths}
    purls = sbom_purls(realnode_images[target].with_name(f"{target}.cdx.json"))
    assert any(p.startswith("pkg:pypi/aiohttp@") for p in purls) or target == "operator"
    assert any(p.startswith("pkg:deb/debian/python3.11@") for p in purls)
    assert any(p.startswith("pkg:pypi/pydantic@") for p in purls)


def test_the_sidecar_image_bakes_the_tiktoken_encodings_and_only_the_sidecars_dependencies(
    realnode_images: dict[str, Path],
) -> None:
    config, paths = image(realnode_images["sidecar"])
    env = dict(item.split("=", 1) for item in config["config"]["Env"])
    cache = env["TIKTOKEN_CACHE_DIR"].lstrip("/")
    present = {p.lstrip("./").removeprefix(cache + "/") for p in paths if p.lstrip("./").startswith(cache + "/")}
    assert present >= TIKTOKEN_FILES
    purls = sbom_purls(realnode_images["sidecar"].with_name("sidecar.cdx.json"))
    assert any(p.startswith("pkg:pypi/tiktoken@") for p in purls)
    if "sidecar" in extras():  # the [sidecar] extra (issue 12) leaves the operator's dependencies out
        for operator_only in ("kopf", "kubernetes", "cryptography"):
            assert not any(p.startswith(f"pkg:pypi/{operator_only}@") for p in purls), operator_only
