"""The Kubernetes writes of the reconciler: status (rate-limited), stage Events, the usage-state ConfigMap.

Blocking calls of the official client (callers use asyncio.to_thread), each with the narrowest verb:
status goes through the status subresource as a JSON merge patch (spec and metadata are never sent, so
GitOps tools see no drift), Events are only created, and the ConfigMap is replaced under its
resourceVersion so two operators (a deposed leader, a restart racing its predecessor) can never both
commit usage: the loser gets 409 and reloads instead of acknowledging records it did not persist.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from tokenbudget_api import names
from tokenbudget_operator.reconciler.conditions import k8s_time

logger = logging.getLogger(__name__)
STATE_KEY = "state.json"


def patch_status(api: Any, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch `status` of one TokenBudget or ThinkTier (a None value removes that field; never spec:
    a ThinkTier's autoApply stays a recommendation)."""
    custom: Any = client.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object_status(
        names.GROUP, names.VERSION, namespace, plural, name, {"status": status},
        _content_type="application/merge-patch+json",
    )


@dataclass
class Written:
    """Per object: the status last written and when (monotonic s), its conditions and the stage announced."""

    status: dict[str, Any] | None = None
    at: float = 0.0
    stage: str | None = None
    conditions: list[Mapping[str, Any]] = field(default_factory=list)


class StatusWriter:
    """Writes one kind's status, per object at most once every `min_interval_s` and only when it changed.

    One writer per kind (TokenBudget, ThinkTier), the same rules for both: a failed patch also waits out
    the interval (an unreachable apiserver is not hammered), and `retain` forgets deleted objects.
    """

    def __init__(self, api: Any, plural: str, min_interval_s: float, patches: Counter) -> None:
        self.api, self.plural, self.min_interval_s, self.patches = api, plural, min_interval_s, patches
        self.slots: dict[str, Written] = {}

    def slot(self, key: str, conditions: Sequence[Mapping[str, Any]] = (), stage: str | None = None) -> Written:
        """What was written for `key`; a new slot starts from the object's stored conditions and stage."""
        return self.slots.setdefault(key, Written(stage=stage, conditions=list(conditions)))

    def due(self, key: str, status: Mapping[str, Any]) -> bool:
        slot = self.slots[key]
        return status != slot.status and time.monotonic() - slot.at >= self.min_interval_s

    async def write(self, namespace: str, name: str, status: dict[str, Any], now: dt.datetime) -> None:
        """Patch `status` (plus lastUpdated) of namespace/name; the slot remembers it only on success."""
        slot = self.slots[f"{namespace}/{name}"]
        try:
            await asyncio.to_thread(patch_status, self.api, self.plural, namespace, name,
                                    {**status, "lastUpdated": k8s_time(now)})
        except Exception as exc:
            self.patches.labels(result="error").inc()
            logger.warning("status patch of %s %s/%s failed: %s", self.plural, namespace, name, exc)
            slot.at = time.monotonic()
            return
        self.patches.labels(result="ok").inc()
        slot.status, slot.at, slot.conditions = status, time.monotonic(), status["conditions"]

    def retain(self, keys: set[str]) -> None:
        for key in set(self.slots) - keys:
            del self.slots[key]


def post_event(api: Any, involved: dict[str, Any], *, type_: str, reason: str, message: str,
               now: dt.datetime) -> None:
    """Create a core/v1 Event on an object (`involved`: apiVersion, kind, namespace, name, uid)."""
    core: Any = client.CoreV1Api(api)
    stamp = k8s_time(now)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": involved["namespace"]},
        "involvedObject": involved,
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "tokenbudget-operator"},
        "reportingComponent": "tokenbudget.io/operator",
        "reportingInstance": "tokenbudget-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    core.create_namespaced_event(involved["namespace"], body)


def read_admin_token(api: Any, namespace: str, secret: str, key: str) -> str | None:
    """The sidecars' admin bearer token of a namespace; None when the Secret or key is missing (open API)."""
    import base64

    core: Any = client.CoreV1Api(api)
    try:
        found = core.read_namespaced_secret(secret, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    raw = (found.data or {}).get(key)
    return base64.b64decode(raw).decode().strip() if raw else None


class StateConflict(RuntimeError):
    """Another writer changed the ConfigMap since we read it: reload before committing anything."""


@dataclass
class StateStore:
    """One ConfigMap holding the aggregator's state (cursors + sums), written whole under resourceVersion."""

    api: Any
    namespace: str
    name: str
    resource_version: str | None = None

    def load(self) -> dict[str, Any] | None:
        """The stored state (and remember its resourceVersion); None when there is none yet."""
        core: Any = client.CoreV1Api(self.api)
        try:
            found = core.read_namespaced_config_map(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                self.resource_version = None
                return None
            raise
        self.resource_version = found.metadata.resource_version
        raw = (found.data or {}).get(STATE_KEY)
        return json.loads(raw) if raw else None

    def save(self, state: dict[str, Any]) -> None:
        """Commit `state`; raises StateConflict when someone else wrote since our last load or save."""
        core: Any = client.CoreV1Api(self.api)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "tokenbudget-operator"}},
            "data": {STATE_KEY: json.dumps(state, separators=(",", ":"), sort_keys=True)},
        }
        try:
            if self.resource_version is None:
                done = core.create_namespaced_config_map(self.namespace, body)
            else:
                body["metadata"]["resourceVersion"] = self.resource_version
                done = core.replace_namespaced_config_map(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise StateConflict(f"ConfigMap {self.namespace}/{self.name}: HTTP {exc.status}") from exc
            raise
        self.resource_version = done.metadata.resource_version


__all__ = ["StateConflict", "StateStore", "StatusWriter", "Written", "patch_status", "post_event",
           "read_admin_token"]
