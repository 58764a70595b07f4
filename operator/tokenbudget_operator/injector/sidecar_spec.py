"""What the webhook adds to a pod: the sidecar container, its volumes, and the app containers' environment.

Split from injection.py (which decides whether to inject and assembles the JSON patch) because these are
the pod-spec builders, reused by tests that run the sidecar as the webhook would configure it.

Upstream keys: a budget's upstream may name a Secret key (`apiKeySecretRef`); the sidecar then sets the
provider's auth header itself, so the key lives in the sidecar container only. Each referenced Secret is a
volume (only the referenced keys, `optional` so a Secret created later or deleted does not keep the pod
from starting: the sidecar then answers 502 naming it) mounted read-only at
`<upstreamKeyDir>/<secret>/<key>`, the path the operator pushes as `apiKeyFile`. App containers get a
placeholder key in the SDK's key variable when they have none, because the SDKs refuse to start without one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenbudget_api import names
from tokenbudget_api.common import LabelSelector
from tokenbudget_operator.config import InjectionConfig

SIDECAR_COMMAND = "tokenbudget-sidecar"  # the console script the sidecar image provides


@dataclass(frozen=True, order=True)
class UpstreamKey:
    """An upstream whose key the sidecar holds: the Secret (in the pod's namespace) and its key."""

    secret: str
    key: str
    upstream: str
    dialect: str  # openai, anthropic or gemini (lower case)


BudgetKeys = tuple[dict[str, Any], tuple[UpstreamKey, ...]]  # a budget's pod selector and its keyed upstreams


def budget_keys(spec: Mapping[str, Any]) -> BudgetKeys | None:
    """What the webhook's index keeps of a TokenBudget: its selector and keyed upstreams (None: it has none).

    Read leniently (the apiserver validated the spec; an odd entry is skipped, never raised on).
    """
    keys = []
    for u in spec.get("upstreams") or []:
        ref = u.get("apiKeySecretRef") if isinstance(u, Mapping) else None
        if isinstance(ref, Mapping) and ref.get("name") and ref.get("key") and u.get("name"):
            dialect = str(u.get("dialect", "")).lower()
            keys.append(UpstreamKey(str(ref["name"]), str(ref["key"]), str(u["name"]), dialect))
    return (dict(spec.get("selector") or {}), tuple(keys)) if keys else None


def keys_for_pod(budgets: Iterable[BudgetKeys], pod_labels: Mapping[str, str]) -> list[UpstreamKey]:
    """The keyed upstreams of every budget (of the pod's namespace) whose selector matches the pod."""
    found: set[UpstreamKey] = set()
    for selector, keys in budgets:
        if LabelSelector.model_validate(selector).matches(dict(pod_labels)):
            found.update(keys)
    return sorted(found)


def _secrets(keys: Sequence[UpstreamKey]) -> list[str]:
    return sorted({k.secret for k in keys})


def key_volumes(keys: Sequence[UpstreamKey]) -> list[dict[str, Any]]:
    """One Secret volume per Secret, holding only the keys the upstreams name."""
    return [{
        "name": f"{names.SIDECAR_KEY_VOLUME_PREFIX}{n}",
        "secret": {"secretName": secret, "optional": True,
                   "items": [{"key": key, "path": key} for key in sorted({k.key for k in keys if k.secret == secret})]},
    } for n, secret in enumerate(_secrets(keys))]


def key_mounts(keys: Sequence[UpstreamKey], config: InjectionConfig) -> list[dict[str, Any]]:
    root = config.upstream_key_dir.rstrip("/")
    return [{"name": f"{names.SIDECAR_KEY_VOLUME_PREFIX}{n}", "mountPath": f"{root}/{secret}", "readOnly": True}
            for n, secret in enumerate(_secrets(keys))]


def key_env(keys: Sequence[UpstreamKey], config: InjectionConfig) -> list[tuple[str, str]]:
    """(env var, placeholder) for each SDK pointed at an upstream whose key the sidecar holds."""
    keyed = {k.upstream for k in keys}
    return [(names.PROVIDER_KEY_ENV_BY_DIALECT[dialect], names.PLACEHOLDER_API_KEY)
            for dialect, upstream in config.sdk_upstreams.items() if upstream in keyed]


def sidecar_container(config: InjectionConfig, keys: Sequence[UpstreamKey] = ()) -> dict[str, Any]:
    """The sidecar container: locked down, probed on its admin port, restartPolicy Always when native; the
    upstreams' key Secrets are mounted here and nowhere else."""
    token_file = f"{names.SIDECAR_ADMIN_TOKEN_DIR}/{names.ADMIN_TOKEN_SECRET_KEY}"

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": names.SIDECAR_ADMIN_PORT_NAME, "scheme": "HTTP"},
            "periodSeconds": period,
            "timeoutSeconds": 1,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": names.SIDECAR_CONTAINER,
        "image": config.sidecar_image,
        "imagePullPolicy": config.sidecar_image_pull_policy,
        "command": [SIDECAR_COMMAND],
        "ports": [
            {"name": names.SIDECAR_ADMIN_PORT_NAME, "containerPort": names.SIDECAR_ADMIN_PORT, "protocol": "TCP"}
        ],
        "env": [
            {"name": names.SIDECAR_ENV_DATA_HOST, "value": names.SIDECAR_DATA_HOST},
            {"name": names.SIDECAR_ENV_DATA_PORT, "value": str(names.SIDECAR_DATA_PORT)},
            # The pod IP, not 0.0.0.0: the admin API is for the operator, not for the app over loopback.
            {"name": names.SIDECAR_ENV_ADMIN_HOST, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": names.SIDECAR_ENV_ADMIN_PORT, "value": str(names.SIDECAR_ADMIN_PORT)},
            {"name": names.SIDECAR_ENV_ADMIN_TOKEN_FILE, "value": token_file},
            {"name": names.SIDECAR_ENV_LEDGER_DIR, "value": names.SIDECAR_LEDGER_DIR},
            {"name": names.SIDECAR_ENV_AWAIT_POLICY_S, "value": str(config.sidecar_await_policy_s)},
            {"name": names.SIDECAR_ENV_LOG_LEVEL, "value": config.sidecar_log_level},
        ],
        "resources": copy.deepcopy(config.sidecar_resources),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.sidecar_run_as_user,
            "runAsGroup": config.sidecar_run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Native: the app containers start once this passes, so their first call finds the proxy up and its
        # policy in force (readyz waits for the operator's first push, at most sidecar_await_policy_s).
        "startupProbe": probe(names.SIDECAR_READYZ_PATH, 1, 60 + config.sidecar_await_policy_s),
        "readinessProbe": probe(names.SIDECAR_READYZ_PATH, 5, 3),
        "livenessProbe": probe(names.SIDECAR_HEALTHZ_PATH, 10, 3),
        # Hold termination until the operator has pulled the last usage records (sidecar drain.py).
        "lifecycle": {"preStop": {"httpGet": {"path": names.SIDECAR_DRAIN_PATH, "port": names.SIDECAR_ADMIN_PORT_NAME,
                                              "scheme": "HTTP"}}},
        "volumeMounts": [
            {"name": names.SIDECAR_LEDGER_VOLUME, "mountPath": names.SIDECAR_LEDGER_DIR},
            {"name": names.SIDECAR_ADMIN_TOKEN_VOLUME, "mountPath": names.SIDECAR_ADMIN_TOKEN_DIR, "readOnly": True},
            {"name": names.SIDECAR_TMP_VOLUME, "mountPath": names.SIDECAR_TMP_DIR},
            *key_mounts(keys, config),
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if config.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def sidecar_volumes(config: InjectionConfig, keys: Sequence[UpstreamKey] = ()) -> list[dict[str, Any]]:
    """The ledger emptyDir, the admin token Secret (mounted into the sidecar only), a writable /tmp, and the
    upstreams' key Secrets (sidecar only too)."""
    ledger: dict[str, Any] = {"sizeLimit": config.ledger_size_limit} if config.ledger_size_limit else {}
    return [
        {"name": names.SIDECAR_LEDGER_VOLUME, "emptyDir": ledger},
        {
            "name": names.SIDECAR_ADMIN_TOKEN_VOLUME,
            "secret": {
                "secretName": config.admin_token_secret,
                "items": [{"key": config.admin_token_secret_key, "path": names.ADMIN_TOKEN_SECRET_KEY}],
            },
        },
        {"name": names.SIDECAR_TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        *key_volumes(keys),
    ]


def app_env(config: InjectionConfig) -> list[tuple[str, str]]:
    """(env var, value) pairs pointing each configured SDK at the sidecar, in a stable order."""
    return [
        (names.BASE_URL_ENV_BY_DIALECT[dialect], names.sidecar_base_url(upstream, dialect))
        for dialect, upstream in config.sdk_upstreams.items()
    ]
