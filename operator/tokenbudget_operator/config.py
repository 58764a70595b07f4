"""Operator settings, from TOKENBUDGET_OPERATOR_* environment variables (the chart sets them).

Two layers: `InjectionConfig` is the pure, frozen input of the injection decision (what the golden tests
build by hand), and `OperatorSettings` is the process configuration read from the environment, which adds
how the webhook is served and who owns its configuration. `OperatorSettings.injection_config()` joins them
once the cluster version is known.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenbudget_api import names

SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class SidecarMode(enum.StrEnum):
    """How the sidecar is added: Auto picks Native on clusters ≥ 1.29 (read once at startup)."""

    AUTO = "Auto"
    NATIVE = "Native"  # an init container with restartPolicy: Always: starts first, stops last
    CLASSIC = "Classic"  # a regular container next to the app's


class FailurePolicy(enum.StrEnum):
    """What the apiserver does when the webhook cannot be reached or errs (see README: the trade-off)."""

    IGNORE = "Ignore"  # admit the pod without the sidecar: the cluster keeps working, the pod is unmetered
    FAIL = "Fail"  # refuse the pod: nothing runs unmetered, but an operator outage blocks pod creation


class WebhookConfigOwner(enum.StrEnum):
    """Who writes the MutatingWebhookConfiguration."""

    INSTALL = "Install"  # the chart: the operator writes only its caBundle (TLS source CASecret), or nothing
    OPERATOR = "Operator"  # the operator creates and updates it, caBundle included (dev, tests, no chart)


class TLSSource(enum.StrEnum):
    """Where the webhook server's certificate comes from."""

    SECRET_DIR = "SecretDir"  # tls.crt / tls.key / ca.crt in a directory (a mounted Secret), reloaded on change
    SELF_SIGNED = "SelfSigned"  # made in memory at startup with `cryptography`; needs owner Operator
    # A CA kept in Secret `ca_secret` (shared by replicas and restarts), a server certificate per replica,
    # the configuration's caBundle kept equal to the Secret's CAs, everything renewed before it expires
    # (injector/ca_store.py). The chart's default.
    CA_SECRET = "CASecret"


_DAY = 86400.0


def _default_resources() -> dict[str, dict[str, str]]:
    # No CPU limit: CFS throttling would add latency to every proxied call; memory is bounded.
    # Memory: an idle sidecar with a tiktoken encoding loaded was 134 MiB RSS on the real node (tests/realnode).
    return {"requests": {"cpu": "20m", "memory": "160Mi"}, "limits": {"memory": "256Mi"}}


def _default_sdk_upstreams() -> dict[str, str]:
    return {name: name for name in names.DEFAULT_UPSTREAM_NAMES}


class _InjectionKnobs(BaseModel):
    """Fields shared by the frozen InjectionConfig and the environment-read OperatorSettings."""

    sidecar_image: str = "ghcr.io/tokenbudget/tokenbudget:0.1.0"
    sidecar_image_pull_policy: str = "IfNotPresent"
    sidecar_resources: dict[str, dict[str, str]] = Field(default_factory=_default_resources)
    sidecar_run_as_user: int = Field(default=65532, ge=1)  # runAsNonRoot needs a numeric non-zero user
    # An injected sidecar stays unready (a native one holds the app's start) until the operator's first policy
    # push, at most this long; then it serves (metered, counted once the policy comes). 0: no gate.
    sidecar_await_policy_s: int = Field(default=30, ge=0, le=600)
    # The injected sidecars' log level. INFO logs one JSON line per call (the record, as the ledger has it);
    # WARNING leaves those out: every record is still in the ledger, /usage, metrics and status, and each line
    # costs ~50 us of CPU per call (benchmarks/sidecar_latency.py) plus the log pipeline's share.
    sidecar_log_level: names.LogLevel = "INFO"
    ledger_size_limit: str | None = "256Mi"  # sizeLimit of the ledger emptyDir; None: unbounded
    excluded_namespaces: tuple[str, ...] = ()  # in addition to the system ones and the operator's own
    allow_pod_opt_in: bool = False  # a pod labelled enabled is injected in a namespace that is not
    overwrite_base_urls: bool = False  # replace an app container's own OPENAI_BASE_URL etc.
    remove_provider_keys: bool = False  # drop OPENAI_API_KEY etc. from app containers (the sidecar has keys)
    # Which upstream (a path prefix on the sidecar's data port) each SDK dialect's base URL points at;
    # a dialect left out is not re-pointed. Default: openai → /openai/v1, anthropic → /anthropic, ...
    sdk_upstreams: dict[str, str] = Field(default_factory=_default_sdk_upstreams)
    admin_token_secret: str = names.ADMIN_TOKEN_SECRET
    admin_token_secret_key: str = names.ADMIN_TOKEN_SECRET_KEY
    require_admin_token_secret: bool = True  # no Secret in the namespace: admit unchanged with a warning
    upstream_key_dir: str = names.SIDECAR_UPSTREAM_KEY_DIR  # where the sidecar finds upstream keys

    @field_validator("sdk_upstreams")
    @classmethod
    def _known_dialects(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(names.BASE_URL_ENV_BY_DIALECT))
        if unknown:
            raise ValueError(f"unknown SDK dialects {unknown}; known: {sorted(names.BASE_URL_ENV_BY_DIALECT)}")
        return value


class InjectionConfig(_InjectionKnobs):
    """Everything the injection decision and patch depend on; pure data, no I/O."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    native_sidecar: bool = True
    operator_namespace: str = names.OPERATOR_NAMESPACE

    @property
    def never_injected_namespaces(self) -> frozenset[str]:
        return never_injected_namespaces(self.operator_namespace, self.excluded_namespaces)


def never_injected_namespaces(operator_namespace: str, excluded: tuple[str, ...]) -> frozenset[str]:
    """System namespaces, the operator's own and the configured extras: never injected, never even called."""
    return frozenset((*names.SYSTEM_NAMESPACES, operator_namespace, *excluded))


def _own_namespace() -> str:
    """The namespace of the service account the operator runs as, else the default install namespace."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE_FILE.read_text(encoding="utf-8").strip() or names.OPERATOR_NAMESPACE
    except OSError:
        return names.OPERATOR_NAMESPACE


class OperatorSettings(BaseSettings, _InjectionKnobs):
    """The operator process's settings; every field is TOKENBUDGET_OPERATOR_<FIELD> (lists/dicts as JSON)."""

    model_config = SettingsConfigDict(env_prefix="TOKENBUDGET_OPERATOR_", extra="ignore")

    namespace: str = Field(default_factory=_own_namespace)  # the operator's own namespace (never injected)
    sidecar_mode: SidecarMode = SidecarMode.AUTO

    # Serving admission reviews.
    webhook_listen_host: str = "0.0.0.0"  # the apiserver reaches the operator over the pod IP
    webhook_port: int = Field(default=names.WEBHOOK_PORT, ge=1, le=65535)
    webhook_url: str | None = None  # e.g. https://127.0.0.1:9443 (tests); None: the Service below
    webhook_service: str = names.WEBHOOK_SERVICE  # clientConfig.service.name, in `namespace`, port 443
    webhook_config_owner: WebhookConfigOwner = WebhookConfigOwner.INSTALL
    webhook_configuration_name: str = names.WEBHOOK_CONFIGURATION
    failure_policy: FailurePolicy = FailurePolicy.IGNORE
    timeout_seconds: int = Field(default=5, ge=1, le=30)  # the apiserver's wait for one review, seconds

    # TLS of the webhook server.
    tls_source: TLSSource = TLSSource.SECRET_DIR
    tls_dir: Path = Path("/etc/tokenbudget/webhook-tls")  # tls.crt, tls.key, ca.crt (cert-manager's layout)
    tls_reload_interval_s: float = Field(default=10.0, gt=0)  # how often the files' mtimes are checked
    tls_extra_sans: tuple[str, ...] = ()  # more DNS names / IPs for the self-signed certificate
    # CASecret only (ca_store.py): the Secret in `namespace`, and how long CAs and certificates live.
    ca_secret: str = names.WEBHOOK_CA_SECRET
    ca_validity_s: float = Field(default=365 * _DAY, gt=0)
    ca_renew_before_s: float = Field(default=60 * _DAY, gt=0)  # a new CA joins the caBundle this long before
    cert_validity_s: float = Field(default=30 * _DAY, gt=0)  # each replica's server certificate
    cert_renew_before_s: float = Field(default=10 * _DAY, gt=0)
    ca_propagation_s: float = Field(default=60.0, ge=0)  # a new CA is in the caBundle this long before it signs

    # Reconciling budgets onto sidecars (reconcile.py).
    sidecar_admin_port: int = Field(default=names.SIDECAR_ADMIN_PORT, ge=1, le=65535)  # on each pod's IP
    sidecar_timeout_s: float = Field(default=2.0, gt=0)  # one admin API call, connect to last byte
    resync_interval_s: float = Field(default=5.0, gt=0)  # re-check every pod this often even without events
    usage_interval_s: float = Field(default=5.0, gt=0)  # seconds between usage pulls from each sidecar
    status_min_interval_s: float = Field(default=2.0, ge=0)  # at most one status patch per budget this often
    usage_state_configmap: str = "tokenbudget-usage-state"  # cursors + sums, in `namespace` (aggregate.py)
    lease_interval_s: float = Field(default=2.0, gt=0)  # seconds between lease rounds (reports → grants)
    lease_ttl_s: float = Field(default=60.0, gt=0)  # a grant's lifetime; the sidecar applies failMode after it
    key_secret_interval_s: float = Field(default=30.0, gt=0)  # how often budgets' key Secrets are checked
    leader_election: bool = True  # only the holder of a coordination.k8s.io Lease reconciles (leader.py)
    leader_lease_name: str = "tokenbudget-operator"  # in `namespace`
    leader_lease_duration_s: float = Field(default=15.0, ge=1)  # a dead leader is replaced after this
    # Spend counters on /metrics (reconciler/spend.py): series per budget, the rest folded into "_other".
    spend_max_models_per_budget: int = Field(default=10, ge=1)
    spend_max_users_per_budget: int = Field(default=25, ge=1)  # only budgets with a per-User limit

    # Notifications of stage changes and period ends to each budget's webhooks (notify_loop.py).
    notify_interval_s: float = Field(default=1.0, gt=0)  # how often pending notifications are looked for
    notify_attempts: int = Field(default=5, ge=1, le=20)  # POSTs per message in one round before giving up
    notify_backoff_s: float = Field(default=0.5, gt=0)  # first retry delay; doubles per attempt
    notify_backoff_max_s: float = Field(default=8.0, gt=0)  # cap of one retry delay (also of a Retry-After)
    notify_timeout_s: float = Field(default=10.0, gt=0)  # one POST, connect to last byte
    notify_retry_after_s: float = Field(default=60.0, gt=0)  # a message that failed is tried again after this
    # Wait after a calendar period ends before summarizing it, so usage pulled late still counts.
    notify_summary_delay_s: float = Field(default=30.0, ge=0)

    # Operations.
    metrics_host: str = "0.0.0.0"  # Prometheus scrapes the pod IP
    metrics_port: int = Field(default=8080, ge=0, le=65535)  # /metrics, /healthz, /readyz; 0: not served
    index_wait_timeout_s: float = Field(default=15.0, ge=0)  # wait for the namespace index before serving
    log_format: str = "json"  # json | text
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _self_signed_needs_owner(self) -> Self:
        if self.tls_source is TLSSource.SELF_SIGNED and self.webhook_config_owner is not WebhookConfigOwner.OPERATOR:
            raise ValueError(
                "tls_source SelfSigned needs webhook_config_owner Operator: only the operator knows the CA "
                "to put in the configuration's caBundle"
            )
        return self

    @model_validator(mode="after")
    def _rotation_leaves_room(self) -> Self:
        """A new CA must be published and settled before the old one ends, and every certificate renewed in time."""
        if self.tls_source is not TLSSource.CA_SECRET:
            return self
        problems = []
        if self.ca_renew_before_s >= self.ca_validity_s:
            problems.append("ca_renew_before_s must be below ca_validity_s")
        if self.cert_renew_before_s >= self.cert_validity_s:
            problems.append("cert_renew_before_s must be below cert_validity_s")
        if self.ca_renew_before_s <= self.ca_propagation_s + 2 * self.tls_reload_interval_s:
            problems.append("ca_renew_before_s must exceed ca_propagation_s + 2 x tls_reload_interval_s")
        if self.cert_renew_before_s <= 2 * self.tls_reload_interval_s:
            problems.append("cert_renew_before_s must exceed 2 x tls_reload_interval_s")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def native_sidecar(self, server_major: int, server_minor: int) -> bool:
        """Native sidecars (beta, on by default) from Kubernetes 1.29; the mode can force either way."""
        if self.sidecar_mode is SidecarMode.AUTO:
            return (server_major, server_minor) >= (1, 29)
        return self.sidecar_mode is SidecarMode.NATIVE

    def injection_config(self, *, native_sidecar: bool) -> InjectionConfig:
        """The frozen decision input, once the cluster version has been read."""
        shared: dict[str, Any] = {name: getattr(self, name) for name in _InjectionKnobs.model_fields}
        return InjectionConfig(**shared, native_sidecar=native_sidecar, operator_namespace=self.namespace)
