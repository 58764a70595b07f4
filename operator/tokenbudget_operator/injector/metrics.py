"""Prometheus metrics of the webhook, and the per-request record the handler fills for the access log.

The admissions counter is how the tests prove the apiserver did *not* call the webhook for a pod, and the
latency histogram is what the benchmark and the README's p99 refer to.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

# Seconds. Fine-grained below 30 ms: the target is a p99 of 20 ms, the apiserver's timeout a few seconds.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

REQUESTS = Counter(
    "tokenbudget_webhook_requests",
    "Admission review HTTP requests the webhook server answered, by status code.",
    ["code"],
)
ADMISSIONS = Counter(
    "tokenbudget_webhook_admissions",
    "Pod admissions decided by the injection webhook, by action, reason and dry run.",
    ["action", "reason", "dry_run"],
)
REQUEST_SECONDS = Histogram(
    "tokenbudget_webhook_request_duration_seconds",
    "Time from the admission review request read to its response, in seconds (TLS handshake excluded).",
    buckets=LATENCY_BUCKETS,
)
TLS_RELOADS = Counter(
    "tokenbudget_webhook_tls_reloads",
    "Times the webhook server swapped in a new certificate without restarting.",
)
CA_ROTATIONS = Counter(
    "tokenbudget_webhook_ca_writes",
    "Writes of the webhook CA Secret by this replica (a first CA, a renewal, an expired CA dropped).",
)
CONFIGURATION_WRITES = Counter(
    "tokenbudget_webhook_configuration_writes",
    "Writes of the MutatingWebhookConfiguration by the operator, by result.",
    ["result"],
)


@dataclass
class AdmissionRecord:
    """What the handler decided, for the one log line the server writes per admission review."""

    namespace: str = ""
    pod: str = ""
    action: str = ""
    reason: str = ""
    dry_run: bool = False


CURRENT: contextvars.ContextVar[AdmissionRecord | None] = contextvars.ContextVar("tokenbudget_admission", default=None)
