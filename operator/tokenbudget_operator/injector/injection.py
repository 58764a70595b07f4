"""Which pods get the sidecar, and the JSON patch (RFC 6902) that adds it.

Pure functions of (pod, what the operator knows about its namespace, config): no kopf, no Kubernetes client,
no I/O, so every row of the decision table is a golden-file test (tests/injector/golden/injection/). The webhook
configuration's selectors keep the apiserver from calling for most pods that would be skipped; the same
rules are checked again here, because the configuration may be edited by hand or rendered by the chart.

Decision table (first matching row wins; README mirrors it):

    namespace is a system one, the operator's own or configured excluded   → skip  ExcludedNamespace
    pod carries the injected annotation                                    → skip  AlreadyInjected
    pod already has a container named like the sidecar                     → skip  SidecarPresent
    pod is a static pod's mirror                                           → skip  MirrorPod
    pod labelled disabled                                                  → skip  PodOptedOut
    namespace not (yet) known to the operator's index                      → skip  NamespaceUnknown   (warning)
    namespace labelled disabled                                            → skip  NamespaceOptedOut
    namespace labelled enabled                                             → inject NamespaceOptedIn
    pod labelled enabled, pod opt-in allowed                               → inject PodOptedIn
    pod labelled enabled, pod opt-in not allowed                           → skip  PodOptInNotAllowed (warning)
    otherwise                                                              → skip  NotOptedIn
  then, for a pod that would be injected:
    hostNetwork pod (the sidecar's ports would be the node's)              → skip  HostNetwork        (warning)
    spec.os.name is not linux                                              → skip  UnsupportedOS      (warning)
    a container already declares port 8787 or 8788                         → skip  PortConflict       (warning)
    the admin token Secret is missing in the namespace (when required)     → skip  AdminTokenSecretMissing (warning)

Dry-run requests get the same answer: the decision has no side effects to suppress.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NotRequired, TypedDict

from tokenbudget_api import names
from tokenbudget_operator.config import InjectionConfig
from tokenbudget_operator.injector.sidecar_spec import (
    UpstreamKey,
    app_env,
    key_env,
    sidecar_container,
    sidecar_volumes,
)


class JSONPatchOp(TypedDict):
    """One RFC 6902 operation; only the three kinds this module emits."""

    op: Literal["add", "remove", "replace"]
    path: str
    value: NotRequired[Any]


class Action(enum.StrEnum):
    INJECT = "Inject"
    SKIP = "Skip"


class Reason(enum.StrEnum):
    """Why a pod was (not) injected; also the `reason` label of the admissions metric."""

    EXCLUDED_NAMESPACE = "ExcludedNamespace"
    ALREADY_INJECTED = "AlreadyInjected"
    SIDECAR_PRESENT = "SidecarPresent"
    MIRROR_POD = "MirrorPod"
    POD_OPTED_OUT = "PodOptedOut"
    NAMESPACE_UNKNOWN = "NamespaceUnknown"
    NAMESPACE_OPTED_OUT = "NamespaceOptedOut"
    NAMESPACE_OPTED_IN = "NamespaceOptedIn"
    POD_OPTED_IN = "PodOptedIn"
    POD_OPT_IN_NOT_ALLOWED = "PodOptInNotAllowed"
    NOT_OPTED_IN = "NotOptedIn"
    HOST_NETWORK = "HostNetwork"
    UNSUPPORTED_OS = "UnsupportedOS"
    PORT_CONFLICT = "PortConflict"
    ADMIN_TOKEN_SECRET_MISSING = "AdminTokenSecretMissing"
    INTERNAL_ERROR = "InternalError"  # set by the webhook when this module raised: admitted unchanged


@dataclass(frozen=True)
class Decision:
    """The outcome for one pod: the patch is empty unless action is Inject."""

    action: Action
    reason: Reason
    warning: str | None = None  # shown to the user by kubectl ("Warning: ...") when set
    patch: list[JSONPatchOp] = field(default_factory=list)


def _skip(reason: Reason, warning: str | None = None) -> Decision:
    return Decision(Action.SKIP, reason, f"tokenbudget: sidecar not injected: {warning}" if warning else None)


def decide(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str] | None,
    config: InjectionConfig,
    *,
    admin_secret_present: bool = True,
    upstream_keys: Sequence[UpstreamKey] = (),
) -> Decision:
    """Apply the decision table to a pod being created; namespace_labels None means the namespace is unknown.

    `upstream_keys`: the keyed upstreams of the budgets that select the pod (mounted into the sidecar only).
    """
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    labels: Mapping[str, str] = metadata.get("labels") or {}
    annotations: Mapping[str, str] = metadata.get("annotations") or {}
    namespace: str = metadata.get("namespace") or ""

    if namespace in config.never_injected_namespaces:
        return _skip(Reason.EXCLUDED_NAMESPACE)
    if names.INJECTED_ANNOTATION in annotations:
        return _skip(Reason.ALREADY_INJECTED)
    if any(c.get("name") == names.SIDECAR_CONTAINER for c in _all_containers(spec)):
        return _skip(Reason.SIDECAR_PRESENT)
    if names.MIRROR_POD_ANNOTATION in annotations:
        return _skip(Reason.MIRROR_POD)
    pod_label = labels.get(names.INJECTION_LABEL)
    if pod_label == names.INJECTION_DISABLED:
        return _skip(Reason.POD_OPTED_OUT)
    if namespace_labels is None or not namespace:
        return _skip(Reason.NAMESPACE_UNKNOWN, f"namespace {namespace!r} is not known to the operator yet")
    namespace_label = namespace_labels.get(names.INJECTION_LABEL)
    if namespace_label == names.INJECTION_DISABLED:
        return _skip(Reason.NAMESPACE_OPTED_OUT)
    if namespace_label == names.INJECTION_ENABLED:
        reason = Reason.NAMESPACE_OPTED_IN
    elif pod_label == names.INJECTION_ENABLED:
        if not config.allow_pod_opt_in:
            return _skip(
                Reason.POD_OPT_IN_NOT_ALLOWED,
                f"pod opt-in is not allowed; label the namespace {names.INJECTION_LABEL}={names.INJECTION_ENABLED}",
            )
        reason = Reason.POD_OPTED_IN
    else:
        return _skip(Reason.NOT_OPTED_IN)

    if spec.get("hostNetwork"):
        return _skip(Reason.HOST_NETWORK, "hostNetwork pods would bind the sidecar's ports on the node")
    os_name = (spec.get("os") or {}).get("name", "linux")
    if os_name != "linux":
        return _skip(Reason.UNSUPPORTED_OS, f"the sidecar runs on linux, the pod on {os_name}")
    taken = sorted(_declared_ports(spec) & {names.SIDECAR_DATA_PORT, names.SIDECAR_ADMIN_PORT})
    if taken:
        return _skip(Reason.PORT_CONFLICT, f"a container already uses port {taken[0]}")
    if config.require_admin_token_secret and not admin_secret_present:
        return _skip(
            Reason.ADMIN_TOKEN_SECRET_MISSING,
            f"Secret {config.admin_token_secret!r} (the sidecar's admin token) is missing in {namespace!r}",
        )
    return Decision(Action.INJECT, reason, None, _patch(pod, config, upstream_keys))


def build_patch(
    pod: Mapping[str, Any],
    namespace_labels: Mapping[str, str] | None,
    config: InjectionConfig,
    *,
    admin_secret_present: bool = True,
    upstream_keys: Sequence[UpstreamKey] = (),
) -> list[JSONPatchOp]:
    """The JSON patch for a pod being created: empty when the decision table says skip."""
    return decide(pod, namespace_labels, config, admin_secret_present=admin_secret_present,
                  upstream_keys=upstream_keys).patch


def _patch(pod: Mapping[str, Any], config: InjectionConfig, keys: Sequence[UpstreamKey]) -> list[JSONPatchOp]:
    metadata: Mapping[str, Any] = pod.get("metadata") or {}
    spec: Mapping[str, Any] = pod.get("spec") or {}
    ops: list[JSONPatchOp] = []

    version = names.INJECTION_CONTRACT_VERSION
    if metadata.get("annotations"):
        ops.append(_add(f"/metadata/annotations/{_escape(names.INJECTED_ANNOTATION)}", version))
    else:
        ops.append(_add("/metadata/annotations", {names.INJECTED_ANNOTATION: version}))

    ops += _append_all("/spec/volumes", spec.get("volumes"), sidecar_volumes(config, keys))

    sidecar = sidecar_container(config, keys)
    if not config.native_sidecar:
        ops.append(_add("/spec/containers/-", sidecar))
    elif spec.get("initContainers"):
        # First: it must be up before the other init containers and the app containers start.
        ops.append(_add("/spec/initContainers/0", sidecar))
    else:
        ops.append(_add("/spec/initContainers", [sidecar]))

    # Only the pod's original (app) containers: in classic mode the sidecar is appended after them.
    for index, container in enumerate(spec.get("containers") or []):
        ops += _env_ops(f"/spec/containers/{index}/env", container.get("env"), config, key_env(keys, config))
    return ops


def _env_ops(path: str, env: Sequence[Mapping[str, Any]] | None, config: InjectionConfig,
             placeholders: Sequence[tuple[str, str]] = ()) -> list[JSONPatchOp]:
    """Point the SDKs at the sidecar in one container, keeping the container's own values unless configured;
    a placeholder key goes where the sidecar holds the upstream's key and the container has none.

    Values a container takes from envFrom (a ConfigMap or Secret) cannot be seen at admission: the explicit
    entry added here wins over them, as Kubernetes gives env precedence over envFrom.
    """
    ops: list[JSONPatchOp] = []
    current = [dict(item) for item in env or []]
    if config.remove_provider_keys:
        # Highest index first, so each removal leaves the indices of the ones still to come intact.
        for position in reversed(range(len(current))):
            if current[position].get("name") in names.PROVIDER_KEY_ENVS:
                ops.append({"op": "remove", "path": f"{path}/{position}"})
                del current[position]
    additions: list[dict[str, Any]] = []
    for name, value in app_env(config):
        index = next((i for i, item in enumerate(current) if item.get("name") == name), None)
        wanted = {"name": name, "value": value}
        if index is None:
            additions.append(wanted)
        elif config.overwrite_base_urls and current[index] != wanted:
            ops.append({"op": "replace", "path": f"{path}/{index}", "value": wanted})
            current[index] = wanted
    present = {item.get("name") for item in current}
    additions += [{"name": name, "value": value} for name, value in placeholders if name not in present]
    ops += _append_all(path, env, additions)
    return ops


def _append_all(path: str, existing: Sequence[Any] | None, items: Sequence[Any]) -> list[JSONPatchOp]:
    """Append items to the array at path, creating it when the pod has none (JSON patch cannot append to null)."""
    if not items:
        return []
    if existing is None:
        return [_add(path, list(items))]
    return [_add(f"{path}/-", item) for item in items]


def _add(path: str, value: Any) -> JSONPatchOp:
    return {"op": "add", "path": path, "value": value}


def _escape(key: str) -> str:
    """A JSON pointer reference token (RFC 6901): '~' → '~0', '/' → '~1'."""
    return key.replace("~", "~0").replace("/", "~1")


def _all_containers(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _declared_ports(spec: Mapping[str, Any]) -> set[int]:
    return {
        int(port["containerPort"])
        for container in _all_containers(spec)
        for port in container.get("ports") or []
        if isinstance(port.get("containerPort"), int)
    }
