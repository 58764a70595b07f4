"""Key Secrets that are not there: said on the budget, before a call gets the sidecar's 502.

An upstream with `apiKeySecretRef` gets its key from a Secret the webhook mounts (optional) into the
sidecar; when that Secret or its key is missing, every call to the upstream is answered 502 by the sidecar.
The team should read why in `kubectl get tb` (Ready=False, reason KeySecretMissing, naming the upstream, the
Secret and the key), and see it clear once the Secret appears: the kubelet then fills the mounted key.

Every `key_secret_interval_s` (and not more often per Secret), the leader GETs each referenced Secret and
looks only at which keys its `data`/`stringData` holds; no value is decoded, logged or kept. Why a GET and
not a metadata-only watch: metadata carries no key names, and RBAC has no metadata-only verb (a list of
PartialObjectMetadata needs `list` on secrets, which reads every value): one `get` on the Secrets budgets
name is the least that answers "does this key exist". A 403 (the rule removed from the operator's role)
turns the check off with one warning; it never becomes a condition.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tokenbudget_operator.reconciler.conditions import Problem, Reason
from tokenbudget_operator.reconciler.fleet import Fleet, every
from tokenbudget_operator.reconciler.views import BudgetView

logger = logging.getLogger(__name__)
MISSING = None  # the Secret does not exist


def secret_keys(api: Any, namespace: str, name: str) -> frozenset[str] | None:
    """The key names a Secret holds; None when it does not exist. Raises ApiException otherwise."""
    core: Any = client.CoreV1Api(api)
    try:
        found = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return MISSING
        raise
    return frozenset(found.data or {}) | frozenset(found.string_data or {})


def key_problems(view: BudgetView, keys: dict[str, frozenset[str] | None]) -> list[Problem]:
    """One problem per upstream of `view` whose Secret (by name, in `keys`) or key is missing."""
    out = []
    for upstream in view.spec.upstreams or []:
        ref = upstream.api_key_secret_ref
        if ref is None or ref.name not in keys:
            continue
        held = keys[ref.name]
        if held is not None and ref.key in held:
            continue
        why = (f"Secret {ref.name!r} does not exist in namespace {view.namespace}" if held is None
               else f"Secret {ref.name!r} has no key {ref.key!r}")
        out.append(Problem(Reason.KEY_SECRET_MISSING, f"upstream {upstream.name!r}: {why} (apiKeySecretRef); the "
                           "sidecar answers its calls with 502 until it exists", view.key))
    return out


class KeySecretChecker:
    """The last answer for each referenced Secret; its problems go to `fleet.key_problems` (status_loop)."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], frozenset[str] | None] = {}  # (namespace, name) -> key names
        self.forbidden = False

    async def round(self, fleet: Fleet) -> None:
        if self.forbidden:
            return
        views = [e.view for e in fleet.budget_entries()]
        wanted = {(v.namespace, u.api_key_secret_ref.name) for v in views for u in v.spec.upstreams or []
                  if u.api_key_secret_ref is not None}
        keys: dict[tuple[str, str], frozenset[str] | None] = {}
        for namespace, name in sorted(wanted):
            try:
                keys[(namespace, name)] = await asyncio.to_thread(secret_keys, fleet.api, namespace, name)
            except ApiException as exc:
                if exc.status == 403:
                    logger.warning("no permission to get Secrets: key Secrets are not checked (%s)", exc.reason)
                    self.forbidden, fleet.key_problems = True, {}
                    return
                logger.warning("cannot check Secret %s/%s: %s", namespace, name, exc.reason)
                if (namespace, name) in self.keys:
                    keys[(namespace, name)] = self.keys[(namespace, name)]  # keep the last answer
        self.keys = keys
        problems = {}
        for view in views:
            found = key_problems(view, {name: held for (ns, name), held in keys.items() if ns == view.namespace})
            if found:
                problems[view.key] = found
        fleet.key_problems = problems


async def run(fleet: Fleet) -> None:
    await every(fleet, fleet.settings.key_secret_interval_s, KeySecretChecker().round, "key secrets")
