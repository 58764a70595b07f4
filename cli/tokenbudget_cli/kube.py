"""Reading TokenBudgets, ThinkTiers, pods and the admin Secret with the flags a kubectl user expects.

kubectl hands a plugin nothing but its argv and environment, so the plugin loads the kubeconfig itself
(`--kubeconfig`, else `KUBECONFIG`, else ~/.kube/config; in a pod, the ServiceAccount) with `--context`,
and resolves the namespace as kubectl does: `-n`, else the context's namespace, else `default`.
Every object is validated into its API model here, so no command reads the CRDs' JSON by string key.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError

from tokenbudget_api import names
from tokenbudget_api.thinktier import ThinkTier
from tokenbudget_api.tokenbudget import TokenBudget

M = TypeVar("M", TokenBudget, ThinkTier)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubeError(Exception):
    """A failure a person can act on (no kubeconfig, not found, forbidden): printed without a traceback."""


@dataclass(frozen=True)
class Target:
    """Where to look: the kubeconfig flags and the namespace scope of one invocation."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    all_namespaces: bool = False


@dataclass(frozen=True)
class PodFacts:
    """What status needs of a pod: whether a budget selects it, and whether it runs the sidecar."""

    name: str
    labels: dict[str, str]
    has_sidecar: bool


class Kube:
    """A connected client for one Target; `namespace` is the resolved one (kubectl's rules)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        try:
            api_client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig, context=target.context)
            contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=target.kubeconfig)
            if target.context:
                active = next((c for c in contexts if c["name"] == target.context), active)
            default_ns = str((active.get("context") or {}).get("namespace") or "default")
        except (ConfigException, FileNotFoundError, TypeError) as exc:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except ConfigException:
                raise KubeError(f"no usable kubeconfig: {exc}") from exc
            api_client = client.ApiClient()
            default_ns = _incluster_namespace()
        self.namespace = target.namespace or default_ns
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    def _list(self, plural: str, name: str | None) -> list[dict[str, Any]]:
        found: Any
        try:
            if name is not None:
                found = self.custom.get_namespaced_custom_object(names.GROUP, names.VERSION, self.namespace,
                                                                 plural, name)
                return [found]
            if self.target.all_namespaces:
                found = self.custom.list_cluster_custom_object(names.GROUP, names.VERSION, plural)
            else:
                found = self.custom.list_namespaced_custom_object(names.GROUP, names.VERSION, self.namespace,
                                                                  plural)
        except client.ApiException as exc:
            if exc.status == 404 and name is not None:
                return []
            raise KubeError(f"listing {plural}: {exc.status} {exc.reason}") from exc
        items: list[dict[str, Any]] = found.get("items", [])
        return items

    def budgets(self, name: str | None = None) -> list[TokenBudget]:
        """TokenBudgets in scope (one by name), as models, sorted by namespace and name."""
        return sorted((_model(TokenBudget, o) for o in self._list(names.TOKENBUDGET_PLURAL, name)), key=_ns_name)

    def tiers(self, name: str | None = None) -> list[ThinkTier]:
        """ThinkTiers in scope (one by name), as models, sorted by namespace and name."""
        return sorted((_model(ThinkTier, o) for o in self._list(names.THINKTIER_PLURAL, name)), key=_ns_name)

    def pods(self, namespace: str) -> list[PodFacts] | None:
        """The namespace's live pods (not Succeeded/Failed, not terminating); None if listing is forbidden."""
        try:
            found = self.core.list_namespaced_pod(namespace)
        except client.ApiException as exc:
            if exc.status in (401, 403):
                return None
            raise KubeError(f"listing pods in {namespace}: {exc.status} {exc.reason}") from exc
        out = []
        for pod in found.items:
            meta, spec = pod.metadata, pod.spec
            phase = pod.status.phase if pod.status else None
            if meta is None or spec is None or not meta.name or phase in ("Succeeded", "Failed") \
                    or meta.deletion_timestamp is not None:
                continue
            containers = [*(spec.init_containers or []), *(spec.containers or [])]
            out.append(PodFacts(name=str(meta.name), labels=dict(meta.labels or {}),
                                has_sidecar=any(c.name == names.SIDECAR_CONTAINER for c in containers)))
        return out

    def pod_ip(self, pod: str) -> str:
        """The pod's IP, where its sidecar's admin port listens (as the operator reaches it)."""
        try:
            found = self.core.read_namespaced_pod(pod, self.namespace)
        except client.ApiException as exc:
            raise KubeError(f"pod {self.namespace}/{pod}: {exc.status} {exc.reason}") from exc
        ip = found.status.pod_ip if found.status else None
        if not ip:
            raise KubeError(f"pod {self.namespace}/{pod} has no IP yet")
        return str(ip)

    def admin_token(self) -> str:
        """The namespace's sidecar admin bearer token (Secret tokenbudget-sidecar-admin, key token)."""
        try:
            secret = self.core.read_namespaced_secret(names.ADMIN_TOKEN_SECRET, self.namespace)
        except client.ApiException as exc:
            raise KubeError(f"secret {self.namespace}/{names.ADMIN_TOKEN_SECRET}: {exc.status} {exc.reason}") \
                from exc
        data = (secret.data or {}).get(names.ADMIN_TOKEN_SECRET_KEY)
        if not data:
            raise KubeError(f"secret {self.namespace}/{names.ADMIN_TOKEN_SECRET} has no key "
                            f"{names.ADMIN_TOKEN_SECRET_KEY}")
        return base64.b64decode(data).decode().strip()


def _incluster_namespace() -> str:
    """In a pod, the ServiceAccount's namespace (kubectl's default there too)."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or "default"
    except OSError:
        return "default"


def _model(kind: type[M], body: dict[str, Any]) -> M:
    try:
        return kind.model_validate(body)
    except ValidationError as exc:
        meta = body.get("metadata") or {}
        raise KubeError(f"{kind.__name__} {meta.get('namespace')}/{meta.get('name')} does not validate: {exc}") \
            from exc


def _ns_name(obj: TokenBudget | ThinkTier) -> tuple[str, str]:
    return namespace_of(obj), name_of(obj)


def namespace_of(obj: TokenBudget | ThinkTier) -> str:
    return str(obj.metadata.get("namespace", ""))


def name_of(obj: TokenBudget | ThinkTier) -> str:
    return str(obj.metadata.get("name", ""))
