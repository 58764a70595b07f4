"""The few Kubernetes API calls the webhook makes itself, all at startup or on certificate rotation.

Never on the admission path: admission reviews are answered from kopf's in-memory indexes. These functions
are blocking (the official client); callers run them with asyncio.to_thread.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tokenbudget_api import names

logger = logging.getLogger(__name__)


def api_client() -> Any:
    """An ApiClient from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def server_version(api: Any) -> tuple[int, int, str]:
    """(major, minor, gitVersion); minor strips vendor suffixes such as GKE's '37+'."""
    info = client.VersionApi(api).get_code()
    return _leading_int(info.major), _leading_int(info.minor), str(info.git_version)


def _leading_int(text: str | None) -> int:
    found = re.match(r"\d+", text or "")
    return int(found[0]) if found else 0


def namespace_names(api: Any) -> set[str]:
    """Names of all namespaces now (paged), to know when kopf's namespace index has caught up."""
    core: Any = client.CoreV1Api(api)  # Any: the client's models type every field as optional
    found: set[str] = set()
    token: str | None = None
    while True:
        page = core.list_namespace(limit=500, _continue=token) if token else core.list_namespace(limit=500)
        found.update(item.metadata.name for item in page.items)
        token = page.metadata._continue
        if not token:
            return found


def namespaces_with_secret(api: Any, name: str) -> set[str]:
    """Namespaces holding a Secret called `name` (server-side field selector: no other Secret is read)."""
    core: Any = client.CoreV1Api(api)
    page = core.list_secret_for_all_namespaces(field_selector=f"metadata.name={name}")
    return {item.metadata.namespace for item in page.items}


def namespaces_with_keyed_budgets(api: Any) -> set[str]:
    """Namespaces with a TokenBudget whose upstreams name a key Secret (what the webhook's keys index holds)."""
    custom: Any = client.CustomObjectsApi(api)
    page = custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.TOKENBUDGET_PLURAL)
    return {item["metadata"]["namespace"] for item in page.get("items", [])
            if any((u or {}).get("apiKeySecretRef") for u in (item.get("spec") or {}).get("upstreams") or [])}


def apply_mutating_webhook_configuration(api: Any, body: dict[str, Any], attempts: int = 5) -> str:
    """Create the configuration, or replace the stored one with body; returns created/replaced/unchanged."""
    admission: Any = client.AdmissionregistrationV1Api(api)  # Any: it takes plain dicts as bodies
    name = body["metadata"]["name"]
    for _ in range(attempts):
        try:
            stored = admission.read_mutating_webhook_configuration(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                admission.create_mutating_webhook_configuration(body)
            except ApiException as create_exc:
                if create_exc.status == 409:  # created meanwhile: replace it on the next round
                    continue
                raise
            return "created"
        current = api.sanitize_for_serialization(stored)
        if current.get("webhooks") == body["webhooks"] and _labels(current) == _labels(body):
            return "unchanged"
        replacement = {**body, "metadata": {**body["metadata"], "resourceVersion": stored.metadata.resource_version}}
        try:
            admission.replace_mutating_webhook_configuration(name, replacement)
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote in between: read again
                continue
            raise
        return "replaced"
    raise RuntimeError(f"MutatingWebhookConfiguration {name}: still conflicting after {attempts} attempts")


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


FIELD_MANAGER = "tokenbudget-operator"  # names the operator's writes in managedFields (what GitOps diffs show)


def read_secret_data(api: Any, namespace: str, name: str) -> tuple[dict[str, bytes], str] | None:
    """(decoded data, resourceVersion) of a Secret; None when it does not exist."""
    core: Any = client.CoreV1Api(api)
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
    return data, str(secret.metadata.resource_version)


def write_secret_data(api: Any, namespace: str, name: str, data: dict[str, bytes], resource_version: str) -> bool:
    """Set the Secret's data if it is still at resource_version (merge patch); False when someone wrote first."""
    core: Any = client.CoreV1Api(api)
    body = {
        "metadata": {"resourceVersion": resource_version},
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }
    try:
        core.patch_namespaced_secret(name, namespace, body, field_manager=FIELD_MANAGER,
                                     _content_type="application/merge-patch+json")
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def webhook_ca_bundles(api: Any, name: str) -> dict[str, bytes] | None:
    """Each webhook's caBundle (decoded PEM, b"" when unset) in a MutatingWebhookConfiguration; None if absent."""
    admission: Any = client.AdmissionregistrationV1Api(api)
    try:
        stored = admission.read_mutating_webhook_configuration(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {hook.name: base64.b64decode(hook.client_config.ca_bundle or "") for hook in stored.webhooks or []}


def set_webhook_ca_bundle(api: Any, name: str, bundle: bytes) -> dict[str, bytes]:
    """Make every webhook of the configuration carry `bundle`; only the caBundle fields are written.

    A strategic merge patch keyed by webhook name: the rest of the object stays the install's (helm, Argo CD),
    so their diffs show this one field as the operator's. Returns the bundles as stored afterwards.
    """
    current = webhook_ca_bundles(api, name)
    if current is None:
        raise LookupError(f"MutatingWebhookConfiguration {name} does not exist (the chart makes it)")
    stale = sorted(hook for hook, pem in current.items() if pem != bundle)
    if not stale:
        return current
    encoded = base64.b64encode(bundle).decode("ascii")
    patch = {"webhooks": [{"name": hook, "clientConfig": {"caBundle": encoded}} for hook in stale]}
    admission: Any = client.AdmissionregistrationV1Api(api)
    stored = admission.patch_mutating_webhook_configuration(
        name, patch, field_manager=FIELD_MANAGER, _content_type="application/strategic-merge-patch+json"
    )
    logger.info("caBundle of MutatingWebhookConfiguration %s set for %s", name, ", ".join(stale))
    return {hook.name: base64.b64decode(hook.client_config.ca_bundle or "") for hook in stored.webhooks or []}
