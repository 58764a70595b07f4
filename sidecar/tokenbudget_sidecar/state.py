"""The sidecar's shared state: policy, admission, thinking, usage log and checkpoint, one per process.

Its own module because three ports reach it (the data path in proxy.py, the admin API in admin.py, the
preStop drain in drain.py): none of them should import another's handlers to get at it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import Gauge

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.windows import Clock, SystemClock
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import BudgetState
from tokenbudget_sidecar.budget_metrics import BudgetCollector
from tokenbudget_sidecar.checkpoint import Checkpoint
from tokenbudget_sidecar.checkpoint_file import CheckpointFile
from tokenbudget_sidecar.metrics import Metrics
from tokenbudget_sidecar.pricing import PriceBook
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.thinking import Thinking
from tokenbudget_sidecar.usage_log import UsageLog


@dataclass
class State:
    """Everything the data path shares; the policy is replaced whole when a new one is applied."""

    settings: Settings
    policy: SidecarPolicy
    metrics: Metrics = field(default_factory=Metrics)
    usage_log: UsageLog = field(default_factory=UsageLog)
    prices: PriceBook = field(init=False)
    counter: tokens.TokenCounter = field(init=False)
    clock: Clock = field(default_factory=SystemClock)
    admission: Admission = field(init=False)
    thinking: Thinking = field(init=False)
    checkpoint: Checkpoint = field(init=False)
    checkpoint_file: CheckpointFile | None = field(init=False)
    session: aiohttp.ClientSession | None = None
    _acks: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    _applied: asyncio.Event = field(init=False, default_factory=asyncio.Event)  # set (and replaced) per push
    pushed: bool = False  # a policy came through PUT /policy since start
    # Budget -> monotonic time until which a call short of this pod's grant is refused without waiting:
    # a wait for that budget's grant just ran out (proxy.admit).
    grant_starved: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.counter = tokens.TokenCounter(self.settings.count_thread_threshold_bytes,
                                           self.settings.count_hard_cap_bytes)
        # What acknowledged records counted, so a restart resumes every window (checkpoint.py); without a
        # ledger it lives in memory only, for a budget that leaves the policy and comes back.
        ledger = self.usage_log.ledger
        self.checkpoint_file = CheckpointFile(ledger.directory) if ledger is not None else None
        self.checkpoint = (self.checkpoint_file.load(self.usage_log.acked, self.clock.now())
                           if self.checkpoint_file is not None else Checkpoint())
        if (checkpoint_file := self.checkpoint_file) is not None:
            Gauge("tokenbudget_checkpoint_bytes", "Size of the last usage checkpoint written (checkpoint.py).",
                  registry=self.metrics.registry).set_function(lambda: checkpoint_file.last_bytes)
            Gauge("tokenbudget_checkpoint_write_errors", "Usage checkpoint writes that failed since start: the "
                  "ledger then keeps acknowledged records.", registry=self.metrics.registry).set_function(
                lambda: checkpoint_file.write_errors)
        self.metrics.registry.register(BudgetCollector(lambda: self.admission))
        Gauge("tokenbudget_ready", "1 when /readyz answers ready (forwarding, not waiting for the first policy "
              "push), else 0.", registry=self.metrics.registry).set_function(
            lambda: 1 if self.session is not None and self.policy_wait_left() == 0 else 0)
        self._build(self.policy)
        self._seed(self.admission.budgets)  # the startup policy's budgets are new to this process
        for record in self.usage_log.recovered:  # calls the last process died with (intents.py)
            self.metrics.observe(record)

    def _build(self, policy: SidecarPolicy) -> Admission:
        self.policy = policy
        deployments = {d: m for u in policy.upstreams for d, m in (u.deployments or {}).items()}
        self.prices = PriceBook(policy.prices, deployments)
        s = self.settings
        self.admission = Admission(policy, self.clock, self.prices, s.default_output_tokens,
                                   s.max_throttle_delay_s, s.reservation_ttl_s, s.prompt_margin_percent)
        self.thinking = Thinking(policy, self.metrics.registry, s.default_output_tokens)
        for budget in self.admission.budgets:  # a series at 0 from the start, so rate() sees the first refusal
            self.metrics.lease_starved.labels(budget.name)
        return self.admission

    def apply(self, policy: SidecarPolicy) -> None:
        """Switch policy without a restart, keeping window use and holds (see Admission.adopt)."""
        old, old_thinking = self.admission, self.thinking
        self._seed(self._build(policy).adopt(old))
        self.thinking.adopt(old_thinking)
        self.pushed = True
        applied, self._applied = self._applied, asyncio.Event()
        applied.set()

    @property
    def awaiting_policy(self) -> bool:
        """Injected and no push yet: calls name no budget (their records say so, and count once it comes)."""
        return self.settings.await_policy_s > 0 and not self.pushed

    def policy_wait_left(self) -> float:
        """Seconds the start-up gate still holds readiness for the first push (0: it no longer does)."""
        if not self.awaiting_policy:
            return 0.0
        return max(self.settings.await_policy_s - (time.monotonic() - self.started), 0.0)

    async def next_policy(self, timeout_s: float) -> bool:
        """Wait for the next policy push (new grants arrive with it); False when none came in time."""
        try:
            await asyncio.wait_for(self._applied.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _seed(self, fresh: list[BudgetState]) -> None:
        """Budgets new to this process's policy get what they counted before: the checkpoint, then the
        unacknowledged records that name them (one path for the startup policy and for pushes)."""
        if fresh:
            self.checkpoint.seed(fresh, self.usage_log.all(), self.clock.now())

    async def acknowledge(self, cursor: int) -> int:
        """The operator has the records up to `cursor`: count them into the checkpoint, store it (off the
        loop), then let the ledger forget them; returns how many records remain unacknowledged.

        Serialized, so checkpoints reach the disk in cursor order. If the checkpoint cannot be stored, the
        records leave memory but stay in the ledger, to be counted (and offered) again after a restart.
        """
        async with self._acks:
            cursor = min(cursor, self.usage_log.last_seq)
            stored = True
            if cursor > self.checkpoint.cursor:  # else already counted (a retry, or a crash before the ack)
                self.checkpoint.absorb(self.usage_log.upto(cursor), self.admission.budgets, cursor,
                                       self.clock.now())
                if self.checkpoint_file is not None:
                    stored = await self.checkpoint_file.save(self.checkpoint)
            return self.usage_log.ack(cursor, persist=stored)

    def user_headers(self) -> list[str]:
        """Every header a budget names for the end user, in budget order: the first one a call sends names
        its user for all budgets (a call has one user, so its record, replays and the operator agree)."""
        return list(dict.fromkeys(b.spec.user_header for b in self.policy.budgets))

    def user_labels(self) -> list[str]:
        """The Gemini labels budgets name for the end user (userLabel), read when no user header is sent."""
        return list(dict.fromkeys(b.spec.user_label for b in self.policy.budgets if b.spec.user_label))


STATE = web.AppKey("state", State)
