"""One active reconciler among replicas: a coordination.k8s.io Lease, acquired and renewed by resourceVersion.

Every replica serves the webhook and fills its indexes (reads are harmless); only the holder of the Lease
pushes policies, grants leases, pulls usage and writes status. Two writers would both grant from the same
remaining budget (each thinking it alone grants) and both acknowledge usage, so exactly one may act.

Fencing: a holder that fails to renew stops acting at once (before the Lease can expire for others), and the
usage ConfigMap's resourceVersion guard refuses a commit from a replica that lost the race anyway. A new
holder reloads the committed usage state and starts a fresh lease allocator, which learns what sidecars hold
(leases.py): the same recovery path as a restart.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

logger = logging.getLogger(__name__)


def default_identity() -> str:
    """The pod name in a cluster (HOSTNAME), else host and pid; unique among live replicas."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


class LeaderElector:
    """Acquire or renew the Lease every `duration_s / 3`; report changes of leadership to a callback."""

    def __init__(self, api: Any, namespace: str, name: str, *, identity: str | None = None,
                 duration_s: float = 15.0) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.duration_s = duration_s
        self.leader = False

    def try_acquire(self, now: dt.datetime | None = None) -> bool:
        """One attempt (blocking): True when we hold the Lease after it."""
        coordination: Any = client.CoordinationV1Api(self.api)
        now = now or dt.datetime.now(dt.UTC)
        seconds = max(1, round(self.duration_s))
        try:
            lease = coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": seconds,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                coordination.create_namespaced_lease(self.namespace, body)
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
            return True
        spec = lease.spec
        renewed = spec.renew_time
        expired = renewed is None or renewed + dt.timedelta(seconds=spec.lease_duration_seconds or seconds) < now
        if spec.holder_identity and spec.holder_identity != self.identity and not expired:
            return False
        if spec.holder_identity != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = seconds
        try:
            coordination.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:  # someone else renewed or took it in between
                return False
            raise
        return True

    def release(self) -> None:
        """Give the Lease up on a clean shutdown (blocking), so a standby need not wait for it to expire."""
        if not self.leader:
            return
        coordination: Any = client.CoordinationV1Api(self.api)
        lease = coordination.read_namespaced_lease(self.name, self.namespace)
        if lease.spec.holder_identity != self.identity:
            return
        lease.spec.holder_identity = None
        lease.spec.lease_duration_seconds = 1
        coordination.replace_namespaced_lease(self.name, self.namespace, lease)
        self.leader = False

    async def run(self, on_change: Callable[[bool], Awaitable[None]]) -> None:
        """Forever: try, and call `on_change(leader)` whenever leadership flips (a failed renewal loses it)."""
        while True:
            try:
                # Bounded: a renewal hanging past the Lease's life must not leave us acting as leader.
                holding = await asyncio.wait_for(asyncio.to_thread(self.try_acquire), timeout=self.duration_s / 3)
            except Exception as exc:
                logger.warning("leader election: %s", exc)
                holding = False
            if holding != self.leader:
                self.leader = holding
                logger.warning("%s leadership of Lease %s/%s as %s", "took" if holding else "lost",
                               self.namespace, self.name, self.identity)
                await on_change(holding)
            await asyncio.sleep(self.duration_s / 3)


__all__ = ["LeaderElector", "default_identity"]
