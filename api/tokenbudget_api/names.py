"""Names shared by the operator, the webhook, the sidecar and the chart.

One module so a rename cannot leave one side behind: every label, annotation, port, path and
environment variable the parts agree on is defined here and nowhere else.
"""

from __future__ import annotations

from typing import Final, Literal

GROUP: Final = "tokenbudget.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CATEGORY: Final = "tokenbudget-io"  # not "tokenbudget": that would shadow the kind in kubectl get

TOKENBUDGET_KIND: Final = "TokenBudget"
TOKENBUDGET_PLURAL: Final = "tokenbudgets"
TOKENBUDGET_SHORT: Final = "tb"
THINKTIER_KIND: Final = "ThinkTier"
THINKTIER_PLURAL: Final = "thinktiers"
THINKTIER_SHORT: Final = "tt"

# Injection: namespaces opt in by label; pods may opt out (or in, where allowed) by label.
INJECTION_LABEL: Final = f"{GROUP}/injection"  # value "enabled" / "disabled"
INJECTED_ANNOTATION: Final = f"{GROUP}/injected"  # value: the sidecar contract version injected
AUTHORIZED_TIERS_ANNOTATION: Final = f"{GROUP}/authorized-tiers"  # comma-separated ThinkTier tiers

# Sidecar ports: data on loopback inside the pod, admin on the pod IP for the operator.
SIDECAR_CONTAINER: Final = "tokenbudget-sidecar"
SIDECAR_DATA_PORT: Final = 8787
SIDECAR_ADMIN_PORT: Final = 8788
SIDECAR_LEDGER_DIR: Final = "/var/lib/tokenbudget"

# Headers apps (or their platform) may set; the sidecar never trusts prompt text for these.
USER_HEADER: Final = "x-tokenbudget-user"
CLASS_HEADER: Final = "x-tokenbudget-class"

# Path prefixes of the sidecar's data port: one per upstream name. The default upstream names are the
# dialect names, so a pod's SDKs are pointed at e.g. http://127.0.0.1:8787/openai/v1.
DEFAULT_UPSTREAM_NAMES: Final = ("openai", "anthropic", "gemini")

# --- Sidecar injection (the admission webhook; the chart renders the same names) -------------------------
INJECTION_ENABLED: Final = "enabled"  # value of INJECTION_LABEL that opts a namespace (or, if allowed, a pod) in
INJECTION_DISABLED: Final = "disabled"  # value of INJECTION_LABEL that opts a pod (or a whole namespace) out
INJECTION_CONTRACT_VERSION: Final = "v1"  # value of INJECTED_ANNOTATION: bump when the injected shape changes
SYSTEM_NAMESPACES: Final = ("kube-system", "kube-public", "kube-node-lease")  # never injected
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"  # set by the apiserver on every namespace
MIRROR_POD_ANNOTATION: Final = "kubernetes.io/config.mirror"  # static pods' API mirrors: never injected

WEBHOOK_ID: Final = "inject-sidecar"  # the kopf handler id, hence the webhook URL path (/inject-sidecar)
WEBHOOK_CONFIGURATION: Final = "tokenbudget-sidecar-injector"  # the MutatingWebhookConfiguration's name
WEBHOOK_NAME_BY_NAMESPACE: Final = f"namespace.sidecar-injector.{GROUP}"  # namespaces labelled enabled
WEBHOOK_NAME_BY_OBJECT: Final = f"object.sidecar-injector.{GROUP}"  # pods labelled enabled, where allowed
WEBHOOK_SERVICE: Final = "tokenbudget-webhook"  # the operator's Service the apiserver calls in a cluster
WEBHOOK_CA_SECRET: Final = "tokenbudget-webhook-ca"  # the webhook CA the operator keeps (TLS source CASecret)
WEBHOOK_PORT: Final = 9443  # the operator's HTTPS listener for admission reviews
OPERATOR_NAMESPACE: Final = "tokenbudget-system"  # the default install namespace (never injected)
FINALIZER: Final = f"{GROUP}/finalizer"  # kopf's finalizer, under our group rather than kopf.zalando.org

SIDECAR_DATA_HOST: Final = "127.0.0.1"  # the data port listens on loopback: only the pod's containers reach it
SIDECAR_ADMIN_PORT_NAME: Final = "tb-admin"  # containerPort name (≤ 15 characters)
SIDECAR_HEALTHZ_PATH: Final = "/healthz"  # on the admin port: liveness and startup probes
SIDECAR_READYZ_PATH: Final = "/readyz"  # on the admin port: readiness probe
SIDECAR_DRAIN_PATH: Final = "/drain"  # on the admin port: preStop hook, waits for the last usage pull
SIDECAR_ADMIN_TOKEN_DIR: Final = "/var/run/secrets/tokenbudget/admin"  # mounted into the sidecar only
ADMIN_TOKEN_SECRET: Final = "tokenbudget-sidecar-admin"  # per-namespace Secret with the admin bearer token
ADMIN_TOKEN_SECRET_KEY: Final = "token"  # its key, also the file name under SIDECAR_ADMIN_TOKEN_DIR
# Per-namespace Secret holding notification webhook URLs, one key per target (TokenBudget spec.notifications):
# one fixed name, so the operator's RBAC grants `get` on it alone rather than on every Secret of the cluster.
NOTIFICATION_SECRET: Final = "tokenbudget-notifications"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"  # on every notification POST, the payload's idempotencyKey
SIDECAR_LEDGER_VOLUME: Final = "tokenbudget-ledger"  # emptyDir mounted at SIDECAR_LEDGER_DIR
SIDECAR_ADMIN_TOKEN_VOLUME: Final = "tokenbudget-admin-token"  # the Secret volume
SIDECAR_TMP_VOLUME: Final = "tokenbudget-tmp"  # emptyDir at /tmp: the root filesystem is read-only
SIDECAR_TMP_DIR: Final = "/tmp"  # an emptyDir of its own inside the sidecar container

# Environment variables the webhook sets in the sidecar container: TOKENBUDGET_ + a field of the sidecar's
# Settings (a test checks each one is a field there).
SIDECAR_ENV_PREFIX: Final = "TOKENBUDGET_"
SIDECAR_ENV_DATA_HOST: Final = f"{SIDECAR_ENV_PREFIX}DATA_HOST"
SIDECAR_ENV_DATA_PORT: Final = f"{SIDECAR_ENV_PREFIX}DATA_PORT"
SIDECAR_ENV_ADMIN_HOST: Final = f"{SIDECAR_ENV_PREFIX}ADMIN_HOST"
SIDECAR_ENV_ADMIN_PORT: Final = f"{SIDECAR_ENV_PREFIX}ADMIN_PORT"
SIDECAR_ENV_ADMIN_TOKEN_FILE: Final = f"{SIDECAR_ENV_PREFIX}ADMIN_TOKEN_FILE"
SIDECAR_ENV_LEDGER_DIR: Final = f"{SIDECAR_ENV_PREFIX}LEDGER_DIR"
SIDECAR_ENV_AWAIT_POLICY_S: Final = f"{SIDECAR_ENV_PREFIX}AWAIT_POLICY_S"
SIDECAR_ENV_LOG_LEVEL: Final = f"{SIDECAR_ENV_PREFIX}LOG_LEVEL"
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]  # the sidecar's and the operator's, as the chart offers

# Environment variables the official SDKs read, set in app containers so they call the sidecar.
OPENAI_BASE_URL_ENV: Final = "OPENAI_BASE_URL"  # openai: base URL including /v1
ANTHROPIC_BASE_URL_ENV: Final = "ANTHROPIC_BASE_URL"  # anthropic: the SDK appends /v1/messages
GEMINI_BASE_URL_ENV: Final = "GOOGLE_GEMINI_BASE_URL"  # google-genai: the SDK appends /v1beta/...
BASE_URL_ENV_BY_DIALECT: Final[dict[str, str]] = {
    "openai": OPENAI_BASE_URL_ENV,
    "anthropic": ANTHROPIC_BASE_URL_ENV,
    "gemini": GEMINI_BASE_URL_ENV,
}
BASE_URL_SUFFIX_BY_DIALECT: Final[dict[str, str]] = {"openai": "/v1", "anthropic": "", "gemini": ""}
# Provider keys the webhook may remove from app containers when the sidecar injects keys itself.
PROVIDER_KEY_ENVS: Final = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY")
# The variable each SDK reads its key from; set to PLACEHOLDER_API_KEY in app containers whose upstream's key
# the sidecar holds (the SDKs refuse to start without a key, and the sidecar replaces whatever they send).
PROVIDER_KEY_ENV_BY_DIALECT: Final[dict[str, str]] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
PLACEHOLDER_API_KEY: Final = "tokenbudget-sidecar-holds-the-key"
SIDECAR_UPSTREAM_KEY_DIR: Final = "/var/run/secrets/tokenbudget/upstreams"  # <dir>/<secret>/<key>, sidecar only
SIDECAR_KEY_VOLUME_PREFIX: Final = "tokenbudget-key-"  # + the Secret's index among the pod's key Secrets


def sidecar_base_url(upstream: str, dialect: str | None = None) -> str:
    """The base URL an SDK of `dialect` (default: the upstream's own name) uses to reach `upstream`.

    For example http://127.0.0.1:8787/openai/v1: the sidecar routes by the first path segment, and the
    suffix is whatever the SDK expects to be part of its base URL.
    """
    suffix = BASE_URL_SUFFIX_BY_DIALECT[dialect or upstream]
    return f"http://{SIDECAR_DATA_HOST}:{SIDECAR_DATA_PORT}/{upstream}{suffix}"
