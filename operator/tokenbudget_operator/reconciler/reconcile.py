"""kopf handlers that put TokenBudgets and ThinkTiers onto sidecars and write usage back onto the budgets.

Shape: three `@kopf.index`es (budgets, tiers, pods with a sidecar) hold the cluster in memory; watch events
only wake one `Reconciler` (started at startup, stopped at cleanup), whose five loops work from the indexes:

- push loop: for every pod with a sidecar, `effective.resolve` gives the policy; when its version differs
  from what the sidecar last said it applied, PUT it (one task per pod at a time, so an older policy never
  lands after a newer one; failures back off exponentially per pod, up to 30 s). Event-driven, plus a
  resync every `resync_interval_s` as a safety net.
- usage loop: every `usage_interval_s`, GET /usage from every sidecar after the persisted cursor,
  `Aggregator.add`, ONE ConfigMap write (cursors + sums, resourceVersion-guarded), then POST /usage/ack
  (aggregate.py explains why this order never loses or double counts a record across a crash).
- lease loop: every `lease_interval_s`, GET /budgets from the sidecars of enforcing budgets, one
  `LeaseAllocator` round per window (calendar, rolling and per-key alike, leases.py); the grants travel
  inside the next pushed policy. No push happens before the first lease round, which learns what the
  sidecars already hold (after a restart).
- status loop: per budget, at most once every `status_min_interval_s` and only when something changed,
  a merge patch of the status subresource (usage, pods selected/synced, conditions written whole), and a
  Kubernetes Event when the aggregated ladder stage changes.
- thinktier loop: every `usage_interval_s`, GET /thinking from every sidecar a ThinkTier selects, merged
  per class across pods (thinktier_status.py), and per ThinkTier a status merge patch under the same
  rate limit as budgets'. Never spec: `autoApply: Enabled` only earns a condition.

Only one replica acts: the holder of a coordination.k8s.io Lease (leader.py); the others keep their
indexes warm and take over with the same recovery path as a restart.

Why events only wake a loop instead of handling the object: a pod's policy depends on every budget and tier
of its namespace, so "what changed" is best recomputed from the indexes; and kopf's on.event handlers write
nothing onto the objects (no finalizer, no progress annotation), so users' metadata stays theirs.
kopf runs non-index handlers only once every index is filled, so the first event also means "the indexes
are complete": before it nothing is pushed, or a half-listed index would strip budgets from pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import kopf
import pydantic

from tokenbudget_api import names
from tokenbudget_api.admin import BudgetReport
from tokenbudget_api.policy import Lease, SidecarPolicy
from tokenbudget_api.tokenbudget import Enforcement, Limit, Stage
from tokenbudget_api.windows import as_utc, limit_amount
from tokenbudget_operator import kube
from tokenbudget_operator.config import OperatorSettings
from tokenbudget_operator.reconciler import metrics as reconcile_metrics
from tokenbudget_operator.reconciler.aggregate import Aggregator
from tokenbudget_operator.reconciler.conditions import Problem, budget_conditions, k8s_time
from tokenbudget_operator.reconciler.effective import BudgetView, Effective, PodView, TierView, resolve
from tokenbudget_operator.reconciler.leader_election import LeaderElector
from tokenbudget_operator.reconciler.leases import (
    LeaseAllocator,
    LeaseConfig,
    LeaseKey,
    PodInput,
    PodReport,
    WindowInput,
    lease_period_start,
    lease_periods,
    quantum_for,
)
from tokenbudget_operator.reconciler.sidecar_client import SidecarClient, SidecarError
from tokenbudget_operator.reconciler.spec_checks import spec_problems
from tokenbudget_operator.reconciler.status_writer import (
    StateConflict,
    StateStore,
    patch_budget_status,
    patch_thinktier_status,
    post_event,
    read_admin_token,
)
from tokenbudget_operator.reconciler.thinktier_status import ThinkTierTracker, thinktier_status
from tokenbudget_operator.runtime import runtime

logger = logging.getLogger(__name__)
MEMO_RECONCILER = "tokenbudget_reconciler"
MAX_BACKOFF_S = 30.0
TOKEN_TTL_S = 60.0
STATUS_FIELDS = ("observedGeneration", "conditions", "stage", "usedPercent", "tightestWindow", "windows",
                 "topConsumers", "dryRun", "pods")
WARNING_STAGES = frozenset({Stage.THROTTLE.value, Stage.DOWNGRADE.value, Stage.BLOCK.value})


# ----- what the indexes hold -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetEntry:
    """A TokenBudget as indexed: the parsed view plus the status fields the operator must carry over."""

    view: BudgetView
    conditions: tuple[Mapping[str, Any], ...] = ()
    stage: str | None = None


@dataclass(frozen=True)
class TierEntry:
    """A ThinkTier as indexed: the parsed view plus its conditions (lastTransitionTime survives a restart)."""

    view: TierView
    conditions: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class PodEntry:
    """A pod with a sidecar: its labels/annotations (policy inputs) and where its admin port is."""

    view: PodView
    ip: str | None
    terminating: bool = False


BudgetIndex = kopf.Index[str, BudgetEntry]  # namespace → its TokenBudgets
TierIndex = kopf.Index[str, TierEntry]  # namespace → its ThinkTiers
PodIndex = kopf.Index[str, PodEntry]  # namespace → its pods with a sidecar


def has_sidecar(spec: Mapping[str, Any], **_: Any) -> bool:
    """Whether the pod runs our sidecar (as a native sidecar or a regular container)."""
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(isinstance(c, Mapping) and c.get("name") == names.SIDECAR_CONTAINER for c in containers)


@kopf.index(names.GROUP, names.VERSION, names.TOKENBUDGET_PLURAL, id="tokenbudget_budgets")
async def tokenbudget_budgets(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, BudgetEntry]:
    try:
        view = BudgetView.from_body(body)
    except pydantic.ValidationError as exc:  # the apiserver validated it; a newer schema may still differ
        logger.warning("TokenBudget %s/%s not understood, ignored: %s", namespace, body.get("metadata", {}).get(
            "name"), exc.error_count())
        return {}
    status = body.get("status") or {}
    return {view.namespace: BudgetEntry(view, tuple(status.get("conditions") or ()), status.get("stage"))}


@kopf.index(names.GROUP, names.VERSION, names.THINKTIER_PLURAL, id="tokenbudget_tiers")
async def tokenbudget_tiers(body: kopf.Body, **_: Any) -> dict[str, TierEntry]:
    try:
        view = TierView.from_body(body)
    except pydantic.ValidationError as exc:
        logger.warning("ThinkTier %s not understood, ignored: %d errors", body.get("metadata", {}).get("name"),
                       exc.error_count())
        return {}
    status = body.get("status") or {}
    return {view.namespace: TierEntry(view, tuple(status.get("conditions") or ()))}


@kopf.index("pods", id="tokenbudget_sidecar_pods", when=has_sidecar)
async def tokenbudget_sidecar_pods(body: kopf.Body, **_: Any) -> dict[str, PodEntry]:
    view = PodView.from_body(body)
    status = body.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return {}
    meta = body.get("metadata") or {}
    return {view.namespace: PodEntry(view, status.get("podIP") or None, bool(meta.get("deletionTimestamp")))}


def _wake(memo: Any) -> None:
    found = memo.get(MEMO_RECONCILER)
    if isinstance(found, Reconciler):
        found.indexes_ready = True
        found.wake.set()


@kopf.on.event(names.GROUP, names.VERSION, names.TOKENBUDGET_PLURAL, id="tokenbudget-budget-events")
async def on_budget_event(memo: Any, **_: Any) -> None:
    _wake(memo)


@kopf.on.event(names.GROUP, names.VERSION, names.THINKTIER_PLURAL, id="tokenbudget-tier-events")
async def on_tier_event(memo: Any, **_: Any) -> None:
    _wake(memo)


@kopf.on.event("pods", id="tokenbudget-pod-events", when=has_sidecar)
async def on_pod_event(memo: Any, **_: Any) -> None:
    _wake(memo)


@kopf.on.startup(id="tokenbudget-reconciler")  # type: ignore[arg-type]
async def start_reconciler(
    memo: Any,
    tokenbudget_budgets: BudgetIndex,
    tokenbudget_tiers: TierIndex,
    tokenbudget_sidecar_pods: PodIndex,
    **_: Any,
) -> None:
    """Restore the committed usage state, then run the loops until cleanup."""
    state = runtime(memo)
    state.readiness["reconciler"] = False
    api = await asyncio.to_thread(kube.api_client)
    rec = Reconciler(state.settings, api, tokenbudget_budgets, tokenbudget_tiers, tokenbudget_sidecar_pods)
    await rec.restore()
    memo[MEMO_RECONCILER] = rec
    await rec.start()
    state.cleanups.append(rec.stop)
    state.readiness["reconciler"] = True


# ----- the reconciler ------------------------------------------------------------------------------------


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


@dataclass
class BudgetStatusState:
    """Per budget: what was last written, when, and the stage last announced."""

    written: dict[str, Any] | None = None
    written_at: float = 0.0
    stage: str | None = None
    conditions: list[Mapping[str, Any]] = field(default_factory=list)


class Reconciler:
    """Pushes policies, pulls usage, writes status; all state in memory except the ConfigMap's."""

    def __init__(self, settings: OperatorSettings, api: Any, budgets: BudgetIndex, tiers: TierIndex,
                 pods: PodIndex) -> None:
        self.settings = settings
        self.api = api
        self.budgets_index = budgets
        self.tiers_index = tiers
        self.pods_index = pods
        self.wake = asyncio.Event()
        self.indexes_ready = False
        self.agents: dict[str, PodAgent] = {}
        self.aggregator = Aggregator()
        self.store = StateStore(api, settings.namespace, settings.usage_state_configmap)
        self.status: dict[str, BudgetStatusState] = {}
        self.tier_tracker = ThinkTierTracker()
        self.tier_status: dict[str, BudgetStatusState] = {}  # ThinkTier key → last write (stage unused)
        self.seen_generation: dict[tuple[str, int], float] = {}  # (budget uid, generation) → first seen, wall s
        self.propagated: set[tuple[str, str, int]] = set()  # (pod uid, budget uid, generation) measured
        self._tokens: dict[str, tuple[str | None, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pushes: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._client: SidecarClient | None = None
        self._commit = asyncio.Lock()  # one usage commit at a time: the ConfigMap write is the commit point
        self.lease_config = LeaseConfig(ttl=dt.timedelta(seconds=settings.lease_ttl_s))
        # A new allocator on every start: it learns what sidecars hold (leases.py, learning mode).
        self.allocator = LeaseAllocator(self.lease_config, started=dt.datetime.now(dt.UTC))
        self.leases: dict[str, dict[str, list[Lease]]] = {}  # pod uid → budget key → grants to push
        self.leases_ready = False  # no push before the first lease round: it learns what sidecars hold
        self.leader = not settings.leader_election  # only the leader acts; the others keep indexes warm
        self.elector = LeaderElector(api, settings.namespace, settings.leader_lease_name,
                                     duration_s=settings.leader_lease_duration_s) if settings.leader_election else None

    # ----- lifecycle -----

    async def restore(self) -> None:
        """Read the committed cursors and sums: records acknowledged before a crash are never pulled again."""
        loaded = await asyncio.to_thread(self.store.load)
        if loaded is not None:
            self.aggregator.restore(loaded)
            logger.info("usage state restored from ConfigMap %s/%s", self.store.namespace, self.store.name)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        self._client = SidecarClient(self._session, timeout_s=self.settings.sidecar_timeout_s)
        for loop in (self._push_loop, self._usage_loop, self._status_loop, self._lease_loop, self._thinktier_loop):
            self._tasks.append(asyncio.create_task(loop(), name=f"tokenbudget-{loop.__name__}"))
        if self.elector is not None:
            self._tasks.append(asyncio.create_task(self.elector.run(self._leadership), name="tokenbudget-leader"))

    @property
    def active(self) -> bool:
        """Whether to act now: the indexes are complete and we are the one replica that may write."""
        return self.indexes_ready and self.leader

    async def _leadership(self, leader: bool) -> None:
        """Taking over starts like a restart: committed usage reloaded, leases learned from the sidecars."""
        if leader:
            async with self._commit:
                await self.restore()
            self.allocator = LeaseAllocator(self.lease_config, started=dt.datetime.now(dt.UTC))
            self.leases, self.leases_ready = {}, False
            for agent in self.agents.values():
                agent.applied, agent.applied_leases, agent.acked = None, {}, 0
            self.status.clear()
            self.tier_status.clear()
        self.leader = leader
        self.wake.set()

    async def stop(self) -> None:
        for task in [*self._tasks, *self._pushes]:
            task.cancel()
        for task in [*self._tasks, *self._pushes]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
        if self.elector is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.elector.release), timeout=2.0)
            except Exception as exc:  # it expires on its own
                logger.warning("could not release the leader Lease: %s", exc)

    @property
    def client(self) -> SidecarClient:
        assert self._client is not None, "start() first"
        return self._client

    # ----- snapshots of the indexes -----

    def budget_entries(self) -> list[BudgetEntry]:
        return [e for ns in list(self.budgets_index) for e in self.budgets_index.get(ns, ())]

    def tier_views(self, namespace: str) -> list[TierView]:
        return [e.view for e in self.tiers_index.get(namespace, ())]

    def tier_entries(self) -> list[TierEntry]:
        return [e for ns in list(self.tiers_index) for e in self.tiers_index.get(ns, ())]

    def pod_entries(self) -> list[PodEntry]:
        return [e for ns in list(self.pods_index) for e in self.pods_index.get(ns, ())]

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

    def _base(self, agent: PodAgent) -> str | None:
        return None if agent.entry.ip is None else f"http://{agent.entry.ip}:{self.settings.sidecar_admin_port}"

    # ----- pushing policies -----

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
        for pod in self.pod_entries():
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
                                    self.settings.upstream_key_dir, leases=self._leases_for(uid, budgets))
        for uid, agent in self.agents.items():
            if uid not in present:
                agent.departed = True

    def _schedule_pushes(self) -> None:
        now = time.monotonic()
        for agent in self.agents.values():
            if agent.departed or agent.pushing or agent.desired is None or agent.entry.ip is None:
                continue
            if agent.applied == agent.desired.policy.version or now < agent.next_try:
                continue
            agent.pushing = True
            task = asyncio.create_task(self._push(agent, agent.desired))
            self._pushes.add(task)
            task.add_done_callback(self._pushes.discard)

    async def _push(self, agent: PodAgent, desired: Effective) -> None:
        pod = agent.entry.view
        began = time.monotonic()
        try:
            base = self._base(agent)
            if base is None:
                return
            token = await self.token(pod.namespace)
            try:
                applied = await self.client.put_policy(base, token, desired.policy)
            except SidecarError as exc:
                if exc.status == 401:
                    self._tokens.pop(pod.namespace, None)
                raise
            agent.applied = applied
            if applied == desired.policy.version:
                agent.applied_leases = applied_leases(desired.policy)
            agent.failures = 0
            agent.next_try = 0.0
            reconcile_metrics.PUSHES.labels(result="ok").inc()
            reconcile_metrics.PUSH_SECONDS.observe(time.monotonic() - began)
            self._observe_propagation(agent, desired)
            logger.info("pod %s applied policy %s (%d budgets)", pod.key, applied, len(desired.budgets))
        except Exception as exc:
            agent.failures += 1
            agent.next_try = time.monotonic() + min(MAX_BACKOFF_S, 0.25 * 2 ** min(agent.failures, 8))
            reconcile_metrics.PUSHES.labels(result="error").inc()
            logger.warning("push to pod %s failed (%d in a row): %s", pod.key, agent.failures, exc)
        finally:
            agent.pushing = False
            self.wake.set()

    def _observe_propagation(self, agent: PodAgent, desired: Effective) -> None:
        """Seconds from the operator first seeing a budget generation to a sidecar applying it."""
        now = time.time()
        for budget in desired.policy.budgets:
            view = self._view(budget.key)
            if view is None or view.generation != budget.generation:
                continue
            key = (agent.entry.view.uid, view.uid, view.generation)
            seen = self.seen_generation.get((view.uid, view.generation))
            if seen is not None and key not in self.propagated:
                self.propagated.add(key)
                reconcile_metrics.PROPAGATION_SECONDS.observe(now - seen)

    def _view(self, key: str) -> BudgetView | None:
        namespace = key.split("/", 1)[0]
        return next((e.view for e in self.budgets_index.get(namespace, ()) if e.view.key == key), None)

    async def _push_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=min(1.0, self.settings.resync_interval_s))
            self.wake.clear()
            if not self.active or not self.leases_ready:
                continue
            try:
                self.refresh()
                self._schedule_pushes()
            except Exception:
                logger.exception("reconcile round failed")

    # ----- pulling usage -----

    async def _pull(self, agent: PodAgent) -> tuple[PodAgent, int] | None:
        base = self._base(agent)
        if base is None:
            return None
        pod = agent.entry.view
        try:
            token = await self.token(pod.namespace)
            page = await self.client.get_usage(base, token, self.aggregator.cursor(pod.uid))
        except Exception as exc:
            reconcile_metrics.PULLS.labels(result="error").inc()
            logger.warning("usage pull from pod %s failed: %s", pod.key, exc)
            return None
        reconcile_metrics.PULLS.labels(result="ok").inc()
        if (page.policy_version is not None and agent.applied is not None and not agent.pushing
                and page.policy_version != agent.applied):
            # The sidecar restarted (its policy is not on disk) or was replaced at the same address.
            logger.info("pod %s runs policy %s, not %s: pushing again", pod.key, page.policy_version,
                        agent.applied)
            agent.applied = None
            self.wake.set()
        added = self.aggregator.add(pod.uid, page.records, pod_name=pod.name, last_seq=page.last_seq)
        return agent, added

    async def usage_round(self) -> int:
        """One pull from every sidecar, one commit, then the acks; returns how many records were new."""
        async with self._commit:
            agents = list(self.agents.values())
            results = [r for r in await asyncio.gather(*(self._pull(a) for a in agents)) if r is not None]
            added = sum(n for _, n in results)
            pending_acks = [a for a, _ in results if self.aggregator.cursor(a.entry.view.uid) > a.acked]
            if added or pending_acks:
                self._forget_deleted_budgets()
                try:
                    await asyncio.to_thread(self.store.save, self.aggregator.state())
                except StateConflict as exc:
                    logger.warning("usage state changed under us (%s): reloading, nothing acknowledged", exc)
                    await self.restore()
                    return 0
                reconcile_metrics.STATE_WRITES.inc()
            for agent in pending_acks:
                pod = agent.entry.view
                cursor = self.aggregator.cursor(pod.uid)
                base = self._base(agent)
                if base is None:
                    continue
                try:
                    await self.client.ack_usage(base, await self.token(pod.namespace), cursor)
                    agent.acked = cursor
                except SidecarError as exc:
                    logger.warning("ack to pod %s failed (retried next round): %s", pod.key, exc)
            for uid in [uid for uid, a in self.agents.items() if a.departed]:
                self.aggregator.forget_pod(uid)
                del self.agents[uid]
            return added

    def _forget_deleted_budgets(self) -> None:
        if not self.indexes_ready:
            return
        known = {e.view.key for e in self.budget_entries()}
        state = self.aggregator.state()
        for budget in set(state["budgets"]) | set(state["pending"]):
            if budget not in known:
                self.aggregator.forget_budget(budget)

    async def _usage_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_interval_s)
            if not self.active:
                continue
            try:
                await self.usage_round()
            except Exception:
                logger.exception("usage round failed")

    # ----- leases for shared windows -----

    def _leases_for(self, uid: str, budgets: list[BudgetView]) -> dict[str, list[Lease]]:
        """The grants to push to one pod; a leased window not yet allocated gets a zero grant.

        Zero, not "no lease": without a lease the sidecar enforces the whole limit locally, so N new pods
        could each spend it all before the first lease round. A zero grant refuses calls for at most one
        lease round (it expires at the period's end, so its version is stable until then).
        """
        granted = self.leases.get(uid, {})
        now = dt.datetime.now(dt.UTC)
        out: dict[str, list[Lease]] = {}
        for view in budgets:
            windows = leased_windows(view)
            if not windows:
                continue
            have = granted.get(view.key, [])
            for lim in windows:
                start = lease_period_start(lim, view.spec.time_zone, now)
                # This period's grant and the next one's, if allocated; never one for a period that ended.
                mine = [x for x in have if x.window == lim.name
                        and (start is None or (x.period_start is not None and x.period_start >= start))]
                if not any(x.period_start == start for x in mine):
                    # Expires long after this period (rolling: today, UTC) ends, so its version holds still.
                    anchor = start or now.replace(hour=0, minute=0, second=0, microsecond=0)
                    mine.append(Lease(window=lim.name, granted=Decimal(0), period_start=start,
                                      expires_at=anchor + dt.timedelta(days=32)))
                out.setdefault(view.key, []).extend(sorted(mine, key=lambda x: x.period_start or now))
        return out

    async def _report(self, agent: PodAgent) -> tuple[str, dict[str, BudgetReport] | None]:
        """uid → the sidecar's GET /budgets by budget key (None: not heard from this round).

        A sidecar whose applied policy we do not know (we just started) is asked for it first: the leases
        it holds are what learning mode renews, and a window it has not used yet is absent from /budgets.
        """
        base = self._base(agent)
        uid = agent.entry.view.uid
        if base is None:
            return uid, None
        try:
            token = await self.token(agent.entry.view.namespace)
            if agent.applied is None and not agent.pushing:
                policy = await self.client.get_policy(base, token)
                agent.applied, agent.applied_leases = policy.version, applied_leases(policy)
            answer = await self.client.get_budgets(base, token, fullest_keys=True)
        except Exception as exc:
            logger.warning("lease report from pod %s failed: %s", agent.entry.view.key, exc)
            return uid, None
        return uid, {b.name: b for b in answer.budgets}

    async def lease_round(self) -> None:
        """Reports from every sidecar of a leased budget, one allocation per window, then the pushes.

        `settled` comes from the usage pulls, which pull a departed pod once more before forgetting it
        (leases.py's contract); a pod not heard from this round keeps what it held, unreported.
        """
        entries = [e for e in self.budget_entries() if leased_windows(e.view)]
        active = [a for a in self.agents.values() if not a.departed and a.desired is not None]
        users = [a for a in active if any(e.view.key in (a.desired.budgets if a.desired else ()) for e in entries)]
        reports = dict(await asyncio.gather(*(self._report(a) for a in users)))
        now = dt.datetime.now(dt.UTC)
        ahead = dt.timedelta(seconds=3 * self.settings.lease_interval_s)  # the next period's grants, in time
        fresh: dict[str, dict[str, list[Lease]]] = {}
        allocated: set[LeaseKey] = set()
        for entry in entries:
            view = entry.view
            selected = [a for a in users if a.desired is not None and view.key in a.desired.budgets]
            periods = [(lim, start) for lim in leased_windows(view)
                       for start in lease_periods(lim, view.spec.time_zone, now, ahead)]
            for lim, start in periods:
                key = LeaseKey(view.key, lim.name, None, start)
                allocated.add(key)
                pods = []
                for a in selected:
                    uid = a.entry.view.uid
                    report = reports.get(uid)
                    if report is None:
                        pods.append(PodInput(uid, None, a.entry.terminating))
                        continue
                    snapshot = report.get(view.key)
                    # A per-key limit's entries (one per key) all live under the lease every key shares.
                    own = [w for w in (snapshot.windows if snapshot else [])
                           if w.name == lim.name and (w.key is None) == (lim.per is None)]
                    held = a.applied_leases.get((view.key, lim.name), [])
                    pods.append(PodInput(uid, PodReport.from_sidecar(key, own, held), a.entry.terminating))
                # Nothing is spent yet in the next period (a call counts in the period it started in).
                upcoming = start is not None and start > now
                settled = {} if upcoming else self.aggregator.settled(view, lim.name, None, now)
                rolling = dt.timedelta(seconds=lim.rolling_seconds) if lim.rolling_seconds else None
                alloc = self.allocator.allocate(WindowInput(key, limit_amount(lim), pods, settled=settled,
                                                            quantum=quantum_for(lim), rolling=rolling), now)
                for grant in alloc.grants:
                    lease = self._stable(grant.pod_uid, view.key, grant.lease(), now)
                    fresh.setdefault(grant.pod_uid, {}).setdefault(view.key, []).append(lease)
        self.allocator.retain(allocated)  # deleted budgets, ended periods
        self.leases = fresh
        reconcile_metrics.LEASES_OUTSTANDING.set(float(self.allocator.outstanding(now)))
        self.wake.set()

    def _stable(self, uid: str, budget: str, lease: Lease, now: dt.datetime) -> Lease:
        """Keep the lease already pushed while only its expiry moved and half its lifetime is left.

        Every changed expiry is a new policy version, hence a push to every pod every round; renewing at
        half-life instead cuts pushes to a trickle, and an earlier expiry than the allocator assumes is on
        the safe side (the sidecar stops admitting sooner, never later).
        """
        old = next((x for x in self.leases.get(uid, {}).get(budget, [])
                    if (x.window, x.period_start) == (lease.window, lease.period_start)), None)
        if (old is not None and old.granted == lease.granted
                and as_utc(old.expires_at) - now > self.lease_config.ttl / 2):
            return old
        return lease

    async def _lease_loop(self) -> None:
        while True:
            if self.active:
                try:
                    self.refresh()
                    await self.lease_round()
                    self.leases_ready = True
                except Exception:
                    logger.exception("lease round failed")
            await asyncio.sleep(self.settings.lease_interval_s if self.leases_ready else 0.05)

    # ----- status -----

    def budget_status(self, entry: BudgetEntry, now: dt.datetime) -> dict[str, Any]:
        """The whole status to write for one budget now (usage, pods, conditions)."""
        view = entry.view
        selected = synced = 0
        problems: list[Problem] = []
        for agent in self.agents.values():
            desired = agent.desired
            if agent.departed or desired is None or view.key not in desired.budgets:
                continue
            selected += 1
            if agent.applied == desired.policy.version:
                synced += 1
            problems.extend(p for p in desired.problems if p.source == view.key and p not in problems)
        problems.extend(spec_problems(view))
        usage = self.aggregator.status(view, now)
        state = self.status.setdefault(view.key, BudgetStatusState(conditions=list(entry.conditions),
                                                                   stage=entry.stage))
        conditions = budget_conditions(state.conditions, generation=view.generation, now=now, usage=usage,
                                       selected=selected, synced=synced, problems=problems,
                                       dry_run=view.spec.enforcement is Enforcement.DRY_RUN)
        out: dict[str, Any] = {key: usage.get(key) for key in STATUS_FIELDS}
        out.update(conditions=conditions, pods={"selected": selected, "synced": synced})
        return out

    async def status_round(self) -> None:
        now_wall = dt.datetime.now(dt.UTC)
        entries = self.budget_entries()
        for entry in entries:
            key = entry.view.key
            status = self.budget_status(entry, now_wall)
            state = self.status[key]
            if status == state.written:
                continue
            if time.monotonic() - state.written_at < self.settings.status_min_interval_s:
                continue
            await self._announce_stage(entry, state, status)
            try:
                await asyncio.to_thread(patch_budget_status, self.api, entry.view.namespace, entry.view.name,
                                        {**status, "lastUpdated": k8s_time(now_wall)})
            except Exception as exc:
                reconcile_metrics.STATUS_PATCHES.labels(result="error").inc()
                logger.warning("status patch of TokenBudget %s failed: %s", key, exc)
                state.written_at = time.monotonic()
                continue
            reconcile_metrics.STATUS_PATCHES.labels(result="ok").inc()
            state.written, state.written_at, state.conditions = status, time.monotonic(), status["conditions"]
        for key in set(self.status) - {e.view.key for e in entries}:
            del self.status[key]

    async def _announce_stage(self, entry: BudgetEntry, state: BudgetStatusState, status: Mapping[str, Any]) -> None:
        """A Kubernetes Event on the TokenBudget when the aggregated ladder stage changes."""
        stage = str(status.get("stage") or Stage.NORMAL.value)
        before = state.stage or Stage.NORMAL.value
        state.stage = stage
        if stage == before:
            return
        view = entry.view
        where = f"window {status.get('tightestWindow')} at {status.get('usedPercent')}%"
        involved = {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND, "namespace": view.namespace,
                    "name": view.name, "uid": view.uid}
        try:
            await asyncio.to_thread(
                post_event, self.api, involved, type_="Warning" if stage in WARNING_STAGES else "Normal",
                reason="StageChanged", message=f"ladder stage {before} -> {stage} ({where})",
                now=dt.datetime.now(dt.UTC))
        except Exception as exc:
            logger.warning("could not post the stage Event for %s: %s", view.key, exc)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            if not self.active:
                continue
            try:
                await self.status_round()  # counts use `desired` as the push loop last refreshed it (≤ 1 s old)
            except Exception:
                logger.exception("status round failed")

    # ----- ThinkTier status -----

    async def _pull_thinking(self, agent: PodAgent) -> None:
        base = self._base(agent)
        if base is None:
            return
        pod = agent.entry.view
        try:
            snapshot = await self.client.get_thinking(base, await self.token(pod.namespace))
        except Exception as exc:  # its last figures stay (module docstring of thinktier_status)
            logger.warning("GET /thinking from pod %s failed: %s", pod.key, exc)
            return
        self.tier_tracker.observe(pod.uid, snapshot)

    async def thinktier_round(self) -> None:
        """Pull every selected sidecar's figures, then write each ThinkTier's status that changed."""
        selected = {uid: a.desired.tiers for uid, a in self.agents.items()
                    if not a.departed and a.desired is not None and a.desired.tiers}
        await asyncio.gather(*(self._pull_thinking(self.agents[uid]) for uid in selected))
        self.tier_tracker.retain(selected)
        now_wall = dt.datetime.now(dt.UTC)
        entries = self.tier_entries()
        for entry in entries:
            view = entry.view
            state = self.tier_status.setdefault(view.key, BudgetStatusState(conditions=list(entry.conditions)))
            agents = [a for uid, a in self.agents.items() if view.key in selected.get(uid, ())]
            problems: list[Problem] = []
            for a in agents:
                assert a.desired is not None
                problems.extend(p for p in a.desired.problems if p.source == view.key and p not in problems)
            synced = sum(1 for a in agents if a.desired is not None and a.applied == a.desired.policy.version)
            status = thinktier_status(
                view, self.tier_tracker.tracks(view.key, (a.entry.view.uid for a in agents)),
                previous=state.conditions, selected=len(agents), synced=synced, problems=problems, now=now_wall)
            if status == state.written:
                continue
            if time.monotonic() - state.written_at < self.settings.status_min_interval_s:
                continue
            try:
                await asyncio.to_thread(patch_thinktier_status, self.api, view.namespace, view.name,
                                        {**status, "lastUpdated": k8s_time(now_wall)})
            except Exception as exc:
                reconcile_metrics.THINKTIER_STATUS_PATCHES.labels(result="error").inc()
                logger.warning("status patch of ThinkTier %s failed: %s", view.key, exc)
                state.written_at = time.monotonic()
                continue
            reconcile_metrics.THINKTIER_STATUS_PATCHES.labels(result="ok").inc()
            state.written, state.written_at, state.conditions = status, time.monotonic(), status["conditions"]
        for key in set(self.tier_status) - {e.view.key for e in entries}:
            del self.tier_status[key]

    async def _thinktier_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.usage_interval_s)
            if not self.active:
                continue
            try:
                await self.thinktier_round()
            except Exception:
                logger.exception("ThinkTier status round failed")


def applied_leases(policy: SidecarPolicy) -> dict[tuple[str, str], list[Lease]]:
    """(budget key, window) → the whole-window leases a policy grants (this period's, maybe the next's)."""
    out: dict[tuple[str, str], list[Lease]] = {}
    for b in policy.budgets:
        for lease in b.leases or []:
            if lease.key is None:
                out.setdefault((b.key, lease.window), []).append(lease)
    return out


def leased_windows(view: BudgetView) -> list[Limit]:
    """The windows split into leases: every window of an enforcing budget (DryRun blocks nothing, so there
    is nothing to split). Rolling and per-key windows get their own kind of lease (leases.py)."""
    if view.spec.enforcement is Enforcement.DRY_RUN:
        return []
    return list(view.spec.limits or [])


__all__ = ["BudgetEntry", "PodEntry", "Reconciler", "TierEntry", "has_sidecar", "leased_windows"]
