"""What the reconciler's loops share: one `PodAgent` per sidecar, the indexes, the usage aggregator, the lease
allocator and the status writers. Each loop is a module of its own (push_loop, usage_loop, lease_loop,
status_loop, thinktier_loop) whose functions take the Fleet; only the Fleet holds state between rounds,
and none of it is persisted except through the usage-state ConfigMap (aggregate.py says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tokenbudget_api import names
from tokenbudget_api.policy import Lease
from tokenbudget_api.thinktier import AutoApply
from tokenbudget_api.tokenbudget import Action, LimitKey
from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.reconciler import lease_rules, metrics
from tokenbudget_operator.reconciler.aggregate import Aggregator
from tokenbudget_operator.reconciler.conditions import Problem
from tokenbudget_operator.reconciler.effective import Effective, resolve
from tokenbudget_operator.reconciler.indexes import (
    BarePodIndex,
    BudgetEntry,
    BudgetIndex,
    PodEntry,
    PodIndex,
    TierEntry,
    TierIndex,
)
from tokenbudget_operator.reconciler.leader_election import LeaderElector
from tokenbudget_operator.reconciler.lease_types import LeaseConfig
from tokenbudget_operator.reconciler.leases import LeaseAllocator
from tokenbudget_operator.reconciler.notify_state import Notifier
from tokenbudget_operator.reconciler.sidecar_client import SidecarClient
from tokenbudget_operator.reconciler.spend import SpendCounters
from tokenbudget_operator.reconciler.status_writer import StateStore, StatusWriter, read_admin_token
from tokenbudget_operator.reconciler.thinktier_apply import AutoApplier
from tokenbudget_operator.reconciler.thinktier_status import ThinkTierTracker
from tokenbudget_operator.reconciler.views import BudgetView, TierView, selects

logger = logging.getLogger(__name__)
TOKEN_TTL_S = 60.0


@dataclass
class PodAgent:
    """What the operator knows about one sidecar between rounds."""

    entry: PodEntry
    desired: Effective | None = None
    applied: str | None = None  # version the sidecar last answered with
    applied_leases: dict[tuple[str, str], list[Lease]] = field(default_factory=dict)  # (budget, window) → held
    pushing: bool = False
    failures: int = 0
    next_try: float = 0.0  # monotonic; backoff after a failed push
    acked: int = 0  # last cursor the sidecar acknowledged to us
    departed: bool = False  # gone from the index: one last usage pull, then forgotten
    reported: bool = False  # a lease round heard from it: its grants are allocated, not placeholders

    @property
    def synced(self) -> bool:
        return self.desired is not None and self.applied == self.desired.policy.version


Loop = Callable[["Fleet"], Coroutine[Any, Any, None]]


class Fleet:
    """Every sidecar the operator talks to, and everything the loops keep between rounds."""

    def __init__(self, settings: OperatorSettings, api: Any, budgets: BudgetIndex, tiers: TierIndex,
                 pods: PodIndex, bare_pods: BarePodIndex | None = None) -> None:
        self.settings = settings
        self.api = api
        self.budgets_index = budgets
        self.tiers_index = tiers
        self.pods_index = pods
        self.bare_pods_index = bare_pods
        self.notifier = Notifier()  # notifications' dedupe records (notify_state.py)
        self.wake = asyncio.Event()
        self.lease_wake = asyncio.Event()  # a pod waits for its first grants: run a lease round now
        self.indexes_ready = False
        self.agents: dict[str, PodAgent] = {}
        self.aggregator = Aggregator(spend=SpendCounters(max_models=settings.spend_max_models_per_budget,
                                                        max_users=settings.spend_max_users_per_budget))
        self.spend = self.aggregator.spend.snapshot()  # what /metrics shows: the last committed counters
        self.store = StateStore(api, settings.namespace, settings.usage_state_configmap)
        self.budget_status = StatusWriter(api, names.TOKENBUDGET_PLURAL, settings.status_min_interval_s,
                                          metrics.STATUS_PATCHES)
        self.tier_status = StatusWriter(api, names.THINKTIER_PLURAL, settings.status_min_interval_s,
                                        metrics.THINKTIER_STATUS_PATCHES)
        self.tier_tracker = ThinkTierTracker()
        self.autoapply = AutoApplier()  # ThinkTier budgets applied in the cluster (thinktier_apply.py)
        self.seen_generation: dict[tuple[str, int], float] = {}  # (budget uid, generation) → first seen, wall s
        self.propagated: set[tuple[str, str, int]] = set()  # (pod uid, budget uid, generation) measured
        self.pushes: set[asyncio.Task[None]] = set()
        self.commit = asyncio.Lock()  # one usage commit at a time: the ConfigMap write is the commit point
        self.lease_config = LeaseConfig(ttl=dt.timedelta(seconds=settings.lease_ttl_s))
        # A new allocator on every start: it learns what sidecars hold (leases.py, learning mode).
        self.allocator = LeaseAllocator(self.lease_config, started=dt.datetime.now(dt.UTC))
        self.leases: dict[str, dict[str, list[Lease]]] = {}  # pod uid → budget key → grants to push
        self.leases_ready = False  # no push before the first lease round: it learns what sidecars hold
        self.leader = not settings.leader_election  # only the leader acts; the others keep indexes warm
        self.elector = LeaderElector(api, settings.namespace, settings.leader_lease_name,
                                     duration_s=settings.leader_lease_duration_s) if settings.leader_election else None
        self.key_problems: dict[str, list[Problem]] = {}  # budget key → missing key Secrets (key_secrets.py)
        self._tokens: dict[str, tuple[str | None, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._webhooks: aiohttp.ClientSession | None = None
        self._client: SidecarClient | None = None

    # ----- lifecycle -----

    async def restore(self) -> None:
        """Read the committed cursors and sums: records acknowledged before a crash are never pulled again."""
        loaded = await asyncio.to_thread(self.store.load)
        if loaded is not None:
            self.aggregator.restore(loaded)
            logger.info("usage state restored from ConfigMap %s/%s", self.store.namespace, self.store.name)
        self.committed()

    def committed(self) -> None:
        """The aggregator's state is what the ConfigMap holds now: show its spend counters (spend.py)."""
        self.spend = self.aggregator.spend.snapshot()

    def exported_spend(self) -> SpendCounters | None:
        """The counters /metrics shows: only on the replica that reconciles (a standby's would be stale)."""
        return self.spend if self.leader else None

    def per_user(self, key: str) -> bool:
        """Whether budget `key` has a per-User limit (its spend counters then carry a user label)."""
        view = self.view(key)
        return view is not None and any(lim.per is LimitKey.USER for lim in view.spec.limits or [])

    async def run(self, loops: Sequence[Loop]) -> None:
        """Open the sidecar client and start each loop (and the leader election) as a task."""
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        self._client = SidecarClient(self._session, timeout_s=self.settings.sidecar_timeout_s)
        # Notification webhooks are outside the cluster: HTTPS_PROXY/NO_PROXY apply to them (never to sidecars).
        self._webhooks = aiohttp.ClientSession(trust_env=True)
        for loop in loops:
            self._tasks.append(asyncio.create_task(loop(self), name=f"tokenbudget-{loop.__module__}"))
        if self.elector is not None:
            self._tasks.append(asyncio.create_task(self.elector.run(self._leadership), name="tokenbudget-leader"))

    @property
    def active(self) -> bool:
        """Whether to act now: the indexes are complete and we are the one replica that may write."""
        return self.indexes_ready and self.leader

    async def _leadership(self, leader: bool) -> None:
        """Taking over starts like a restart: committed usage reloaded, leases learned from the sidecars."""
        if leader:
            async with self.commit:
                await self.restore()
            self.allocator = LeaseAllocator(self.lease_config, started=dt.datetime.now(dt.UTC))
            self.leases, self.leases_ready = {}, False
            for agent in self.agents.values():
                agent.applied, agent.applied_leases, agent.acked = None, {}, 0
            self.budget_status.slots.clear()
            self.tier_status.slots.clear()
            self.notifier.clear()
        self.leader = leader
        self.wake.set()

    async def stop(self) -> None:
        for task in [*self._tasks, *self.pushes]:
            task.cancel()
        for task in [*self._tasks, *self.pushes]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for session in (self._session, self._webhooks):
            if session is not None:
                await session.close()
        if self.elector is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.elector.release), timeout=2.0)
            except Exception as exc:  # it expires on its own
                logger.warning("could not release the leader Lease: %s", exc)

    @property
    def client(self) -> SidecarClient:
        assert self._client is not None, "run() first"
        return self._client

    @property
    def webhooks(self) -> aiohttp.ClientSession:
        """The client session of notification webhooks (the environment's proxy settings apply)."""
        assert self._webhooks is not None, "run() first"
        return self._webhooks

    # ----- snapshots of the indexes -----

    def budget_entries(self) -> list[BudgetEntry]:
        return [e for ns in list(self.budgets_index) for e in self.budgets_index.get(ns, ())]

    def tier_views(self, namespace: str) -> list[TierView]:
        """The namespace's ThinkTiers, each with the budgets autoApply applies to its classes now."""
        out = []
        for e in self.tiers_index.get(namespace, ()):
            applied = self.autoapply.budgets(e.view.key) if e.view.spec.calibration.auto_apply is AutoApply.ENABLED \
                else {}
            out.append(dataclasses.replace(e.view, applied=tuple(sorted(applied.items()))) if applied else e.view)
        return out

    def tier_entries(self) -> list[TierEntry]:
        return [e for ns in list(self.tiers_index) for e in self.tiers_index.get(ns, ())]

    def pod_entries(self) -> list[PodEntry]:
        return [e for ns in list(self.pods_index) for e in self.pods_index.get(ns, ())]

    def view(self, key: str) -> BudgetView | None:
        namespace = key.split("/", 1)[0]
        return next((e.view for e in self.budgets_index.get(namespace, ()) if e.view.key == key), None)

    def without_sidecar(self, view: BudgetView) -> list[str]:
        """Names of live pods `view` selects that run without the sidecar (unmetered), sorted."""
        if self.bare_pods_index is None:
            return []
        return sorted(p.name for p in self.bare_pods_index.get(view.namespace, ())
                      if view.spec.selector.matches(dict(p.labels)))

    def selected(self, key: str, *, tiers: bool = False) -> list[PodAgent]:
        """The live agents whose desired policy holds budget (or ThinkTier) `key`."""
        return [a for a in self.agents.values() if not a.departed and a.desired is not None
                and key in (a.desired.tiers if tiers else a.desired.budgets)]

    # ----- talking to one sidecar -----

    async def token(self, namespace: str) -> str | None:
        """The namespace's admin token, cached for a minute (re-read at once after a 401)."""
        cached = self._tokens.get(namespace)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        s = self.settings
        try:
            found = await asyncio.to_thread(read_admin_token, self.api, namespace, s.admin_token_secret,
                                            s.admin_token_secret_key)
        except Exception as exc:
            logger.warning("cannot read the admin token Secret in %s: %s", namespace, exc)
            found = cached[0] if cached else None
        self._tokens[namespace] = (found, time.monotonic() + TOKEN_TTL_S)
        return found

    def forget_token(self, namespace: str) -> None:
        self._tokens.pop(namespace, None)

    def base(self, agent: PodAgent) -> str | None:
        return None if agent.entry.ip is None else f"http://{agent.entry.ip}:{self.settings.sidecar_admin_port}"

    # ----- desired policies -----

    def refresh(self) -> None:
        """Recompute every pod's desired policy from the indexes; mark departed pods."""
        entries = self.budget_entries()
        by_ns: dict[str, list[BudgetView]] = {}
        now = time.time()
        current: set[tuple[str, int]] = set()
        for e in entries:
            by_ns.setdefault(e.view.namespace, []).append(e.view)
            current.add((e.view.uid, e.view.generation))
            self.seen_generation.setdefault((e.view.uid, e.view.generation), now)
        # Only current generations are measured: the two tables stay as small as the cluster.
        self.seen_generation = {k: v for k, v in self.seen_generation.items() if k in current}
        self.propagated = {k for k in self.propagated if (k[1], k[2]) in current and k[0] in self.agents}
        present: set[str] = set()
        wall = dt.datetime.now(dt.UTC)
        pods = list(self.pod_entries())
        sharing = throttle_sharing(by_ns, pods)
        for pod in pods:
            uid = pod.view.uid
            present.add(uid)
            agent = self.agents.get(uid)
            if agent is None:
                agent = self.agents[uid] = PodAgent(pod)
            if agent.entry.ip != pod.ip:
                agent.applied = None  # a new address may be a new sidecar: push again
            agent.entry = pod
            agent.departed = False
            budgets = by_ns.get(pod.view.namespace, [])
            agent.desired = resolve(pod.view, budgets, self.tier_views(pod.view.namespace),
                                    self.settings.upstream_key_dir,
                                    leases=lease_rules.leases_for(self.leases.get(uid, {}), budgets, wall),
                                    sharing=sharing)
        for uid, agent in self.agents.items():
            if uid not in present:
                agent.departed = True


def throttle_sharing(by_ns: dict[str, list[BudgetView]], pods: Sequence[PodEntry]) -> dict[str, int]:
    """Pods selected per budget whose ladder throttles: the budget's rate is theirs to split."""
    out: dict[str, int] = {}
    for pod in pods:
        if pod.terminating:
            continue
        for view in by_ns.get(pod.view.namespace, []):
            if any(s.action is Action.THROTTLE for s in view.spec.ladder or []) and selects(view, pod.view):
                out[view.key] = out.get(view.key, 0) + 1
    return out


async def every(fleet: Fleet, seconds: float, round_: Callable[[Fleet], Awaitable[object]], what: str) -> None:
    """Run `round_` every `seconds` while this replica acts; a failed round is logged and the next one comes."""
    while True:
        await asyncio.sleep(seconds)
        if not fleet.active:
            continue
        try:
            await round_(fleet)
        except Exception:
            logger.exception("%s round failed", what)


__all__ = ["Fleet", "Loop", "PodAgent", "every"]
