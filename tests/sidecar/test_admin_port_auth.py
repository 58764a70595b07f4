"""The app container cannot change its own budget or read usage through the admin port (docs/threat-model.md).

Two halves of one claim. The admin API of a real sidecar process refuses every call that changes or reads
budgets and usage without the bearer token (or with a wrong or empty one), and a refused push changes
nothing; and the injected pod gives that token, and the provider keys, to the sidecar container only (checked
on every golden injection patch, the webhook's real output).
"""

from __future__ import annotations

import copy
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from sidecar_process import sidecar_process

from tokenbudget_api import names
from tokenbudget_api.policy import SidecarPolicy

GOLDEN = Path(__file__).resolve().parents[1] / "injector" / "golden" / "injection"
TOKEN = "the-admin-token"
GUARDED = [("PUT", "/policy", {"version": "attacker"}), ("GET", "/policy", None), ("GET", "/usage", None),
           ("POST", "/usage/ack", {"cursor": 10**9}), ("GET", "/budgets", None), ("GET", "/thinking", None)]


def send(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.parametrize("file_token", [TOKEN, ""], ids=["token", "empty-token-file"])
def test_every_budget_and_usage_route_refuses_a_caller_without_the_token(tmp_path: Path, file_token: str) -> None:
    (tmp_path / "token").write_text(file_token)
    env = {**os.environ, "TOKENBUDGET_ADMIN_TOKEN_FILE": str(tmp_path / "token")}
    with sidecar_process(tmp_path, SidecarPolicy(version="v-operator"), env=env, ledger_dir=tmp_path / "l") as s:
        for method, path, body in GUARDED:
            for given in (None, "", "wrong", f"{file_token}x"):
                status, answer = send(method, s.admin + path, body, given)
                assert status == 401, (method, path, given, status, answer)
        for open_path in ("/healthz", "/metrics"):
            assert urllib.request.urlopen(s.admin + open_path, timeout=10).status == 200  # probes, Prometheus
        if file_token:
            status, policy = send("GET", s.admin + "/policy", token=TOKEN)
            assert (status, policy["version"]) == (200, "v-operator")  # the refused push changed nothing
            assert send("PUT", s.admin + "/policy", {"version": "v2"}, TOKEN)[0] == 200  # the token does work


def injected(case: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    golden = json.loads(case.read_text())
    if golden["expected"]["action"] != "Inject":
        return None
    pod = jsonpatch.apply_patch(copy.deepcopy(golden["pod"]), golden["expected"]["patch"])
    return golden, pod


def secret_volumes(pod: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["secret"]["secretName"] for v in pod["spec"].get("volumes") or [] if "secret" in v}


INJECTED = [p for p in sorted(GOLDEN.glob("*.json")) if injected(p) is not None]


@pytest.mark.parametrize("case", INJECTED, ids=lambda p: p.stem)
def test_only_the_sidecar_container_mounts_the_admin_token_and_the_provider_keys(case: Path) -> None:
    found = injected(case)
    assert found is not None
    _, pod = found
    secrets = secret_volumes(pod)
    assert names.ADMIN_TOKEN_SECRET in secrets.values()
    containers = [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]
    sidecar = [c for c in containers if c["name"] == names.SIDECAR_CONTAINER]
    assert len(sidecar) == 1
    assert {m["name"] for m in sidecar[0].get("volumeMounts") or []} >= set(secrets)
    for container in containers:
        if container["name"] == names.SIDECAR_CONTAINER:
            continue
        mounts = {m["name"] for m in container.get("volumeMounts") or []}
        assert not mounts & set(secrets), f"{container['name']} mounts {mounts & set(secrets)}"
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            assert ref is None, f"{container['name']} gets {env['name']} from Secret {ref}"
        assert not any("secretRef" in src for src in container.get("envFrom") or [])
