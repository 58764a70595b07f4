"""The chart's NetworkPolicies (templates/networkpolicy.yaml; claims in docs/threat-model.md), rendered by
a real helm and applied to the real kube-apiserver.

What is checked is the policy as written: that no rule admits the admin port from any peer but the operator's
pods (selected by exactly the labels the chart gives them) and the configured extras, that the other ports
stay as open as without a policy only when asked, and that egress is limited to DNS and the named peers.
Whether a CNI enforces it is the CNI's part: the test control plane has none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane

sys.path.insert(0, str(Path(__file__).parent))
from test_chart import documents, fresh_namespace, helm, render, run_helm

ADMIN_PORT = 8788
__all__ = ["helm"]  # the fixture, imported for pytest to find


def policies(helm: Path, *sets: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = documents(render(helm, "sidecarAdminToken.create=false", *sets))
    return {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in docs if o["kind"] == "NetworkPolicy"}


def operator_pod_labels(helm: Path) -> dict[str, str]:
    docs = documents(render(helm, "sidecarAdminToken.create=false"))
    deployment = next(o for o in docs if o["kind"] == "Deployment")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def covers(port_rule: dict[str, Any], port: int, protocol: str = "TCP") -> bool:
    if port_rule.get("protocol", "TCP") != protocol:
        return False
    start = port_rule.get("port")
    return start is None or start <= port <= port_rule.get("endPort", start)


def peers_for(policy: dict[str, Any], port: int) -> list[Any]:
    """Every peer an ingress rule admits on `port` ("anyone" when a rule has no `from`)."""
    out: list[Any] = []
    for rule in policy["spec"]["ingress"]:
        ports = rule.get("ports")
        if not ports or any(covers(p, port) for p in ports):
            out += rule.get("from") or ["anyone"]
    return out


def test_no_policy_is_rendered_unless_enabled(helm: Path) -> None:
    assert policies(helm, "sidecarAdminToken.namespaces={team-a}") == {}


def test_the_admin_port_admits_only_the_operators_pods_in_each_namespace(helm: Path) -> None:
    found = policies(helm, "networkPolicy.enabled=true", "sidecarAdminToken.namespaces={team-a,team-b}")
    assert set(found) == {("team-a", "tokenbudget-sidecar-admin"), ("team-b", "tokenbudget-sidecar-admin")}
    labels = operator_pod_labels(helm)
    for policy in found.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        [peer] = peers_for(policy, ADMIN_PORT)
        assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "tokenbudget-system"}}
        selected = peer["podSelector"]["matchLabels"]
        assert selected.items() <= labels.items()  # it selects the operator's pods
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= set(selected)
        # the other ports stay open to anyone, TCP and UDP, as without the policy
        assert peers_for(policy, 8787) == ["anyone"]
        assert peers_for(policy, 8789) == ["anyone"]
        assert any(covers(p, 53, "UDP") for r in policy["spec"]["ingress"] for p in r.get("ports") or [])


def test_extra_peers_for_the_admin_port_and_closing_the_other_ports(helm: Path) -> None:
    found = policies(helm, "networkPolicy.enabled=true", "networkPolicy.namespaces={team-a}",
                     "networkPolicy.allowOtherIngress=false",
                     "networkPolicy.adminPortFrom[0].namespaceSelector.matchLabels.name=monitoring",
                     "networkPolicy.podSelector.matchLabels.app=chat")
    policy = found["team-a", "tokenbudget-sidecar-admin"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "chat"}}
    peers = peers_for(policy, ADMIN_PORT)
    assert len(peers) == 2
    assert peers[1] == {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
    assert peers_for(policy, 8080) == []  # nothing else is admitted by this policy


def test_egress_goes_only_to_dns_and_the_named_peers_and_needs_them(helm: Path) -> None:
    found = policies(helm, "networkPolicy.enabled=true", "networkPolicy.namespaces={team-a}",
                     "networkPolicy.egress.enabled=true", "networkPolicy.egress.to[0].ipBlock.cidr=203.0.113.0/24")
    egress = found["team-a", "tokenbudget-egress"]["spec"]
    assert egress["policyTypes"] == ["Egress"]
    dns, providers = egress["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert providers == {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}
    with pytest.raises(AssertionError, match=r"networkPolicy\.egress\.to must name"):
        render(helm, "sidecarAdminToken.create=false", "networkPolicy.enabled=true",
               "networkPolicy.namespaces={team-a}", "networkPolicy.egress.enabled=true")


def test_enabling_it_without_namespaces_is_refused_naming_the_values(helm: Path) -> None:
    with pytest.raises(AssertionError, match=r"networkPolicy\.namespaces"):
        run_helm(helm, "template", "tokenbudget", str(Path(__file__).parents[2] / "charts" / "tokenbudget"),
                 "--set", "networkPolicy.enabled=true", "--set", "sidecarAdminToken.create=false")


def test_the_policies_are_accepted_by_the_apiserver_server_side(helm: Path, kube: ControlPlane) -> None:
    team = fresh_namespace(kube, "team-np")
    try:
        found = policies(helm, "networkPolicy.enabled=true", f"networkPolicy.namespaces={{{team}}}",
                         "networkPolicy.egress.enabled=true", "networkPolicy.egress.to[0].ipBlock.cidr=203.0.113.0/24")
        for policy in found.values():
            kube.kubectl("apply", "--server-side", "--field-manager", "helm-test", "-f", "-", input=json.dumps(policy))
            stored = json.loads(kube.kubectl("get", "networkpolicy", policy["metadata"]["name"], "-n", team,
                                             "-o", "json").stdout)
            assert stored["spec"]["policyTypes"] == policy["spec"]["policyTypes"]
            if "ingress" in policy["spec"]:
                assert peers_for(stored, ADMIN_PORT) == peers_for(policy, ADMIN_PORT)
                assert any(p.get("endPort") == 65535 for r in stored["spec"]["ingress"] for p in r.get("ports") or [])
    finally:
        kube.kubectl("delete", "namespace", team, "--ignore-not-found", "--wait=false", check=False)
