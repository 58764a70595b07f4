"""What examples/gitops/ documents, read from the files themselves: shared by tests/gitops and tests/realnode."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GITOPS = Path(__file__).resolve().parents[1] / "examples" / "gitops"
ARGO_APPLICATION = GITOPS / "argocd" / "application.yaml"
FLUX_RELEASE = GITOPS / "flux" / "helmrelease.yaml"
HEALTH_CHECKS = GITOPS / "argocd" / "resource_customizations" / "tokenbudget.io"
ANY_ELEMENT = "*"


@dataclass(frozen=True)
class Ignored:
    """One documented ignoreDifferences entry: fields of one object (fieldsV1 path segments, * = a list item)."""

    kind: str
    name: str
    path: tuple[str, ...]

    def covers(self, kind: str, name: str, fields: tuple[str, ...]) -> bool:
        if (kind, name) != (self.kind, self.name) or len(fields) < len(self.path):
            return False
        return all(want in (ANY_ELEMENT, got) for want, got in zip(self.path, fields, strict=False))


def _fields(entry: str) -> tuple[str, ...]:
    """A JSON pointer (/data) or a jq path (.webhooks[]?.clientConfig.caBundle) as fieldsV1 segments."""
    if entry.startswith("/"):
        return tuple(f"f:{part}" for part in entry.strip("/").split("/"))
    out: list[str] = []
    for name, element in re.findall(r"\.(\w+)(\[\]\??)?", entry):
        out.append(f"f:{name}")
        if element:
            out.append(ANY_ELEMENT)
    return tuple(out)


def argo_application() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ARGO_APPLICATION.read_text())
    return loaded


def documented_ignores() -> list[Ignored]:
    """The Argo CD Application's ignoreDifferences, the fields the chart leaves to someone else."""
    found = []
    for entry in argo_application()["spec"]["ignoreDifferences"]:
        for path in [*entry.get("jsonPointers", []), *entry.get("jqPathExpressions", [])]:
            found.append(Ignored(entry["kind"], entry["name"], _fields(path)))
    return found


def leaf_fields(fields: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The field paths one managedFields entry (fieldsV1) sets; "." (a list item's own entry) left out."""
    found: list[tuple[str, ...]] = []
    for key, sub in fields.items():
        if key == ".":
            continue
        found += leaf_fields(sub, (*path, key)) if sub else [(*path, key)]
    return found


@dataclass(frozen=True)
class Drift:
    """What a live install looks like to a GitOps tool: objects whose server-side diff is not empty, and the
    fields of the chart's objects that a manager other than helm wrote (status subresources aside)."""

    diffs: dict[str, list[str]]
    foreign: list[tuple[str, str, str, tuple[str, ...]]]  # (kind, name, manager, field path)


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in obj["metadata"].items() if k not in ("managedFields", "resourceVersion", "generation")}
    return {**obj, "metadata": meta}


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{path}/{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{path}/{i}")]
    return [] if a == b else [f"{path}: live {a!r} → chart {b!r}"[:300]]


def drift(manifest: str, kubectl: Any, field_manager: str = "helm") -> Drift:
    """For every object of a rendered manifest: a server-side apply dry run as `field_manager` (forcing
    conflicts, as `kubectl diff --server-side` and Argo CD's server-side diff do) compared with the live object,
    and the live object's managedFields. `kubectl(*args, input=...)` runs kubectl (returns a CompletedProcess)."""
    diffs: dict[str, list[str]] = {}
    foreign: list[tuple[str, str, str, tuple[str, ...]]] = []
    for doc in yaml.safe_load_all(manifest):
        if not doc:
            continue
        kind, meta = doc["kind"], doc["metadata"]
        scope = ["-n", meta["namespace"]] if meta.get("namespace") else []
        live = json.loads(kubectl("get", kind, meta["name"], *scope, "-o", "json", "--show-managed-fields").stdout)
        applied = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                          f"--field-manager={field_manager}", "-o", "json", "-f", "-", input=json.dumps(doc))
        found = _differences(_comparable(live), _comparable(json.loads(applied.stdout)))
        if found:
            diffs[f"{kind}/{meta['name']}"] = found
        for entry in live["metadata"].get("managedFields") or []:
            if entry["manager"] == field_manager or entry.get("subresource"):
                continue
            foreign += [(kind, meta["name"], entry["manager"], p) for p in leaf_fields(entry.get("fieldsV1") or {})]
    return Drift(diffs, foreign)
