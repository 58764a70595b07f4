"""examples/gitops/: the Argo CD Application and the Flux GitRepository + HelmRelease point at this chart, their
values render through its schema (as Argo CD and Flux render: `helm template`, no `lookup`), and what they tell
the tools to ignore is exactly the fields the chart leaves to the operator (tests/realnode checks those live)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitops_examples import FLUX_RELEASE, argo_application, documented_ignores

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def helm() -> Path:
    found = os.environ.get("HELM_BIN")
    if found and Path(found).is_file():
        return Path(found)
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail("CI must not skip the GitOps examples: set HELM_BIN (scripts/helm.sh builds helm)", pytrace=False)
    pytest.skip("helm unavailable: run scripts/helm.sh or set HELM_BIN")


def flux() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(FLUX_RELEASE.read_text())}


def render(helm: Path, chart: str, release: str, namespace: str, values: dict[str, Any], tmp: Path) -> list[Any]:
    values_file = tmp / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    done = subprocess.run(
        [str(helm), "template", release, str(REPO_ROOT / chart), "-n", namespace, "-f", str(values_file)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_the_argo_cd_application_renders_this_chart_and_ignores_only_what_it_leaves_to_the_operator(
    helm: Path, tmp_path: Path
) -> None:
    app = argo_application()
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source, namespace = app["spec"]["source"], app["spec"]["destination"]["namespace"]
    assert yaml.safe_load((REPO_ROOT / source["path"] / "Chart.yaml").read_text())["name"] == "tokenbudget"
    assert source["helm"]["valuesObject"]["sidecarAdminToken"]["create"] is False  # no lookup in helm template
    docs = render(helm, source["path"], source["helm"]["releaseName"], namespace, source["helm"]["valuesObject"],
                  tmp_path)
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for entry in app["spec"]["ignoreDifferences"]:
        target = rendered[entry["kind"], entry["name"]]  # an object the chart makes ...
        assert entry.get("namespace", namespace) == target["metadata"].get("namespace", namespace)
        assert target["apiVersion"].rpartition("/")[0] == entry["group"]
    # ... and fields it never renders, so a server-side apply of the chart leaves the operator's values alone.
    webhook = rendered["MutatingWebhookConfiguration", "tokenbudget-sidecar-injector"]
    assert all("caBundle" not in hook["clientConfig"] for hook in webhook["webhooks"])
    assert "data" not in rendered["Secret", "tokenbudget-webhook-ca"]
    assert {(i.kind, i.name) for i in documented_ignores()} == {
        ("MutatingWebhookConfiguration", "tokenbudget-sidecar-injector"), ("Secret", "tokenbudget-webhook-ca")}
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_the_flux_release_is_the_same_install_from_a_git_source(helm: Path, tmp_path: Path) -> None:
    docs, app = flux(), argo_application()
    source, release = docs["GitRepository"], docs["HelmRelease"]
    assert source["apiVersion"] == "source.toolkit.fluxcd.io/v1"
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    chart = release["spec"]["chart"]["spec"]
    assert chart["sourceRef"] == {"kind": "GitRepository", "name": source["metadata"]["name"],
                                  "namespace": source["metadata"]["namespace"]}
    assert Path(chart["chart"]) == Path(app["spec"]["source"]["path"])
    assert f"!/{app['spec']['source']['path']}/" in source["spec"]["ignore"].split()  # the chart is fetched
    assert source["spec"]["url"] == app["spec"]["source"]["repoURL"]
    assert release["metadata"]["namespace"] == app["spec"]["destination"]["namespace"]
    assert release["spec"]["values"] == app["spec"]["source"]["helm"]["valuesObject"]
    render(helm, chart["chart"], release["spec"]["releaseName"], release["metadata"]["namespace"],
           release["spec"]["values"], tmp_path)
    ignored = {(i["target"]["kind"], i["target"]["name"]) for i in release["spec"]["driftDetection"]["ignore"]}
    assert ignored == {(i.kind, i.name) for i in documented_ignores()}
