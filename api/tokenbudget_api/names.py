"""Names shared by the operator, the webhook, the sidecar and the chart.

One module so a rename cannot leave one side behind: every label, annotation, port, path and
environment variable the parts agree on is defined here and nowhere else.
"""

from __future__ import annotations

from typing import Final

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
