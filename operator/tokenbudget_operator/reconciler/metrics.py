"""Prometheus metrics of the reconciler: pushes, pulls, status patches and propagation time.

Propagation is measured from the moment the operator first sees a budget generation in its index to a
sidecar answering that it applied a policy containing it: the part of "apply → enforcing" the operator
controls (the apiserver's watch delay comes before it, usually milliseconds).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

PUSHES = Counter("tokenbudget_operator_policy_pushes", "PUT /policy calls to sidecars, by result.", ["result"])
PUSH_SECONDS = Histogram("tokenbudget_operator_policy_push_duration_seconds",
                         "One successful policy push (retries included), in seconds.", buckets=SECONDS_BUCKETS)
PROPAGATION_SECONDS = Histogram(
    "tokenbudget_operator_propagation_seconds",
    "From the operator first seeing a TokenBudget generation to a selected sidecar applying it, in seconds.",
    buckets=SECONDS_BUCKETS,
)
PULLS = Counter("tokenbudget_operator_usage_pulls", "GET /usage calls to sidecars, by result.", ["result"])
STATE_WRITES = Counter("tokenbudget_operator_usage_state_writes", "Commits of the usage-state ConfigMap.")
STATUS_PATCHES = Counter("tokenbudget_operator_status_patches", "TokenBudget status patches, by result.",
                         ["result"])
THINKTIER_STATUS_PATCHES = Counter("tokenbudget_operator_thinktier_status_patches",
                                   "ThinkTier status patches, by result.", ["result"])
LEASES_OUTSTANDING = Gauge("tokenbudget_operator_leases_outstanding",
                           "Granted but not yet spent, summed over every leased window (in each window's unit).")
