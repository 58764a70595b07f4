"""The README's RBAC table is exactly what the operator's ServiceAccount may do (docs/threat-model.md).

deploy/rbac.yaml is applied to a real apiserver, and `kubectl auth can-i --list` is asked as the operator's
ServiceAccount, in the operator's namespace and in a team namespace, minus what any ServiceAccount may do
(a fresh one with no binding: discovery, self reviews). What remains must be the README's "Least
privilege" table row for row: a verb or resource added to the RBAC without the table, or to the table
without the RBAC, fails here. The table's last row (the webhook configuration, only when the operator owns
it) is commented out of deploy/rbac.yaml, and must then be absent.
"""

from __future__ import annotations

import re
from pathlib import Path

from controlplane import ControlPlane
from operator_harness import OPERATOR_NAMESPACE

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RBAC = REPO / "deploy" / "rbac.yaml"
SA = f"system:serviceaccount:{OPERATOR_NAMESPACE}:tokenbudget-operator"
Grant = tuple[str, frozenset[str], frozenset[str], bool]  # resource.group, names, verbs, operator namespace only


def table_rows() -> list[tuple[str, str, str]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("**Least privilege**", 1)[1].split("\n\n", 2)[1]
    rows = [line.strip().strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [(a.strip(), b.strip(), c.strip()) for a, b, c in rows[2:]]


def expected_grants() -> set[Grant]:
    """The table read as grants; a row whose reason starts with "only with" is optional and left out."""
    out: set[Grant] = set()
    for what, verbs, why in table_rows():
        if why.startswith("only with"):
            continue
        group = m.group(1) if (m := re.search(r"\(([a-z0-9.]+\.[a-z]+)\)", what)) else ""
        names = frozenset(re.findall(r"name `([^`]+)`", what))
        local = "in the operator namespace" in what
        head = re.split(r" \(| in the |, name ", what, maxsplit=1)[0]
        main = frozenset(v.strip() for v in re.sub(r"\(\+ ([a-z]+)\)", "", verbs).split(",") if v.strip())
        extra = frozenset(re.findall(r"\(\+ ([a-z]+)\)", verbs))
        for resource in (r.strip() for r in head.split(",")):
            full = resource.replace("/", f".{group}/", 1) if "/" in resource and group else (
                f"{resource}.{group}" if group else resource)
            out.add((full, names, main, local))
            if extra:
                out.add((full.split("/")[0], frozenset(), extra, local))
    return out


LINE = re.compile(r"^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$")


def can_i(kube: ControlPlane, user: str, namespace: str) -> set[tuple[str, frozenset[str], frozenset[str]]]:
    out = kube.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", namespace).stdout
    found = set()
    for line in out.splitlines()[1:]:
        m = LINE.match(line)
        if m and not m.group(2):  # resource rules only (non-resource URLs are discovery)
            found.add((m.group(1), frozenset(m.group(3).split()), frozenset(m.group(4).split())))
    return found


def test_the_operators_permissions_are_exactly_the_readme_table(kube: ControlPlane) -> None:
    kube.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kube.kubectl("create", "namespace", "rbac-team", check=False)
    kube.kubectl("apply", "-f", str(RBAC))
    try:
        baseline = f"system:serviceaccount:{OPERATOR_NAMESPACE}:nobody-at-all"
        granted: set[Grant] = set()
        for namespace, local in ((OPERATOR_NAMESPACE, True), ("rbac-team", False)):
            extra = can_i(kube, SA, namespace) - can_i(kube, baseline, namespace)
            granted |= {(r, n, v, local) for r, n, v in extra}
        cluster = {(r, n, v) for r, n, v, local in granted if not local}
        granted = {g for g in granted if not g[3] or (g[0], g[1], g[2]) not in cluster}  # cluster-wide, seen twice
        assert granted == expected_grants(), (
            f"RBAC but not in the README: {sorted(granted - expected_grants())}\n"
            f"README but not in the RBAC: {sorted(expected_grants() - granted)}")
    finally:
        kube.kubectl("delete", "-f", str(RBAC), "--ignore-not-found", check=False)
