"""The MutatingWebhookConfiguration, as a pure function of the settings and the client config.

Written by the operator itself when `webhook_config_owner` is Operator (kopf's managed mode cannot express it:
no namespaceSelector, a fixed 30 s timeout, no NotIn in objectSelector); the chart renders the same shape
when it owns the configuration.

Two webhooks, disjoint by namespace label, so the apiserver only calls for pods the decision table may inject:
- by namespace: namespaces labelled enabled (minus the never-injected ones), pods not labelled disabled;
- by object (only when pod opt-in is allowed): namespaces labelled neither enabled nor disabled, pods labelled
  enabled.
"""

from __future__ import annotations

import base64
from typing import Any

from tokenbudget_api import names
from tokenbudget_operator.config import OperatorSettings, never_injected_namespaces

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "tokenbudget-operator"


def client_config(settings: OperatorSettings, ca_pem: bytes) -> dict[str, Any]:
    """Where the apiserver sends reviews: a URL (tests, out-of-cluster) or the operator's Service."""
    bundle = base64.b64encode(ca_pem).decode("ascii")
    path = f"/{names.WEBHOOK_ID}"
    if settings.webhook_url:
        return {"url": settings.webhook_url.rstrip("/") + path, "caBundle": bundle}
    return {
        "service": {"name": settings.webhook_service, "namespace": settings.namespace, "port": 443, "path": path},
        "caBundle": bundle,
    }


def mutating_webhook_configuration(settings: OperatorSettings, client: dict[str, Any]) -> dict[str, Any]:
    """The whole object; replacing the stored one with it is idempotent."""
    excluded = sorted(never_injected_namespaces(settings.namespace, settings.excluded_namespaces))
    not_excluded = {"key": names.NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": excluded}

    def webhook(name: str, namespace_selector: list[dict[str, Any]], object_selector: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": name,
            "clientConfig": client,
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "resources": ["pods"],
                    "operations": ["CREATE"],
                    "scope": "Namespaced",
                }
            ],
            "namespaceSelector": {"matchExpressions": [*namespace_selector, not_excluded]},
            "objectSelector": {"matchExpressions": [object_selector]},
            "failurePolicy": settings.failure_policy.value,
            "matchPolicy": "Equivalent",
            "sideEffects": "None",  # dry-run requests are safe to send: the webhook only answers
            "timeoutSeconds": settings.timeout_seconds,
            "admissionReviewVersions": ["v1"],
            # Never: a later webhook's additions are not ours to re-point, and a call again would be a no-op
            # anyway (the injected annotation).
            "reinvocationPolicy": "Never",
        }

    label = names.INJECTION_LABEL
    webhooks = [
        webhook(
            names.WEBHOOK_NAME_BY_NAMESPACE,
            [{"key": label, "operator": "In", "values": [names.INJECTION_ENABLED]}],
            {"key": label, "operator": "NotIn", "values": [names.INJECTION_DISABLED]},
        )
    ]
    if settings.allow_pod_opt_in:
        webhooks.append(
            webhook(
                names.WEBHOOK_NAME_BY_OBJECT,
                [{"key": label, "operator": "NotIn", "values": [names.INJECTION_ENABLED, names.INJECTION_DISABLED]}],
                {"key": label, "operator": "In", "values": [names.INJECTION_ENABLED]},
            )
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": settings.webhook_configuration_name, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "webhooks": webhooks,
    }
