"""The generated CRDs, as a real kube-apiserver enforces them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from controlplane import ControlPlane
from invalid_specs import EXAMPLES, INVALID, Invalid

pytestmark = pytest.mark.kube


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_kubectl_apply_accepts_every_example_strictly(kube: ControlPlane, path: Path) -> None:
    # --validate=strict makes the apiserver reject unknown or duplicate fields instead of dropping them.
    out = kube.kubectl("apply", "--validate=strict", "-f", str(path))
    assert "created" in out.stdout or "configured" in out.stdout or "unchanged" in out.stdout
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    meta = doc["metadata"]
    got = json.loads(kube.kubectl("get", doc["kind"].lower(), meta["name"], "-n", meta["namespace"],
                                  "-o", "json").stdout)
    assert got["spec"]["selector"] == doc["spec"]["selector"]


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_the_apiserver_rejects_each_invalid_spec_naming_the_field(kube: ControlPlane, case: Invalid) -> None:
    out = kube.kubectl("create", "--dry-run=server", "--validate=strict", "-f", "-",
                       input=json.dumps(case.build()), check=False)
    assert out.returncode != 0, f"{case.id} was accepted"
    assert case.field in out.stderr, out.stderr
    assert case.message in out.stderr, out.stderr


def test_kubectl_get_tb_shows_stage_and_usage_columns(kube: ControlPlane) -> None:
    kube.kubectl("apply", "-f", str(EXAMPLES / "tokenbudget-team.yaml"))
    kube.kubectl("apply", "-f", str(EXAMPLES / "thinktier.yaml"))
    status = {
        "status": {"stage": "Throttle", "usedPercent": 81, "tightestWindow": "monthly-tokens",
                   "pods": {"selected": 3, "synced": 3}}
    }
    kube.kubectl("patch", "tb", "support-bot", "-n", "default", "--subresource=status", "--type=merge",
                 "-p", json.dumps(status))
    table = kube.kubectl("get", "tb", "support-bot", "-n", "default").stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[:6] == ["NAME", "STAGE", "USED%", "WINDOW", "SYNCED", "READY"]
    assert row[:5] == ["support-bot", "Throttle", "81", "monthly-tokens", "3"]
    wide = kube.kubectl("get", "tokenbudget", "support-bot", "-n", "default", "-o", "wide").stdout
    assert "MODE" in wide
    assert "Enforce" in wide
    # the shared category lists both kinds
    listed = kube.kubectl("get", "tokenbudget-io", "-n", "default", "-o", "name").stdout
    assert "tokenbudget.tokenbudget.io/support-bot" in listed
    assert "thinktier.tokenbudget.io/assistant" in listed


def test_kubectl_explain_shows_the_field_descriptions(kube: ControlPlane) -> None:
    spec = kube.kubectl("explain", "tokenbudget.spec").stdout
    assert "The budget a platform team declares" in spec
    assert "ladder" in spec
    assert "Graduated actions by percent" in spec
    limits = kube.kubectl("explain", "tb.spec.limits.period").stdout
    assert "Calendar window in spec.timeZone" in limits
    tiers = kube.kubectl("explain", "thinktier.spec.tiers.budgetTokens").stdout
    assert "at least 1024" in tiers


def test_the_status_subresource_ignores_spec_changes(kube: ControlPlane) -> None:
    """The operator writes status only; a status patch must never be able to touch the spec."""
    kube.kubectl("apply", "-f", str(EXAMPLES / "tokenbudget-dryrun.yaml"))
    kube.kubectl("patch", "tb", "research-dryrun", "-n", "default", "--subresource=status", "--type=merge",
                 "-p", json.dumps({"spec": {"enforcement": "Enforce"}, "status": {"stage": "Alert"}}))
    got = json.loads(kube.kubectl("get", "tb", "research-dryrun", "-n", "default", "-o", "json").stdout)
    assert got["spec"]["enforcement"] == "DryRun"
    assert got["status"]["stage"] == "Alert"
