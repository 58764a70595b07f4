"""One TokenBudget's accounting inside a sidecar: its windows, the holds in them, its ladder and dry-run counts.

Admission reserves the worst case of a call (prompt + output cap at list price, and one request)
against every window that applies to it, settlement replaces the reservation with what the provider
reported. Because the event loop runs one admission at a time and the check and the reservation happen
without an await in between, concurrent calls can never together reserve more than a window's room:
the total settled can exceed a limit only by what a provider bills beyond the reserved cap.

The parts live beside this: windows.py (one window: use, lease, holds, percent), holds.py (a call's
reservation and its lazy holds), ladder.py (the steps with hysteresis), refusal_reasons.py (the words and
Retry-After of a refusal), amounts.py (a call's amount in a limit's unit).
"""

from __future__ import annotations

import collections
import datetime as dt
import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal

from tokenbudget_api import admin
from tokenbudget_api.admin import AlertReport, BudgetReport
from tokenbudget_api.policy import BudgetPolicy, Lease
from tokenbudget_api.tokenbudget import Action, Enforcement, FailMode, LadderStep, Limit, Stage
from tokenbudget_api.windows import Clock, window_for
from tokenbudget_sidecar import refusal_reasons
from tokenbudget_sidecar.amounts import Demand, Spend, spent_in, unit_of
from tokenbudget_sidecar.holds import Reservation
from tokenbudget_sidecar.ladder import MAX_ALERTS, Ladder
from tokenbudget_sidecar.prompt_count import PromptCount
from tokenbudget_sidecar.refusal_reasons import LEASE_ROUND_S
from tokenbudget_sidecar.windows import Window, fullest_keys, key_for

MAX_KEYS_PER_LIMIT = 10_000  # per-User/per-Model windows kept; the least recently used are dropped


@dataclass
class WouldHave:
    count: int = 0
    tokens: int = 0
    cost_usd: Decimal = Decimal(0)


class Refused(Exception):
    """A call the budget does not admit: answered 429 (or 400 for oversize) in the provider's shape."""

    def __init__(self, status: int, message: str, retry_after: float | None = None,
                 awaits_grant: bool = False, budget: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        # The budget has room but this pod's grant has not: a lease round will fix it, so the data path
        # may wait for the next policy push instead of answering 429 (proxy.py, `grant_wait_s`).
        self.awaits_grant = awaits_grant
        self.budget = budget  # "namespace/name" of the budget that refused, where known (metrics)


class BudgetState:
    def __init__(self, policy: BudgetPolicy, clock: Clock) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.clock = clock
        self.ladder = Ladder(policy.key, list(self.spec.ladder or []), self.spec.hysteresis_percent)
        self.windows: dict[tuple[str, str | None], Window] = {}
        self.reservations: dict[int, Reservation] = {}
        self.would_have: dict[str, WouldHave] = {}
        self.throttle_next: dt.datetime | None = None
        self.leases: dict[tuple[str, str | None], tuple[Lease, ...]] = {}
        for lease in policy.leases or []:
            self.leases[lease.window, lease.key] = (*self.leases.get((lease.window, lease.key), ()), lease)
        self.alerts: collections.deque[AlertReport] = collections.deque(maxlen=MAX_ALERTS)
        # Use before this instant may be missing from the windows (the checkpoint was lost, checkpoint.py):
        # a window whose span reaches back to it cannot be checked, and `failMode` decides (see reserve).
        self.history_lost_before: dt.datetime | None = None

    @property
    def name(self) -> str:
        return self.policy.key

    @property
    def dry_run(self) -> bool:
        return self.spec.enforcement is Enforcement.DRY_RUN

    # ----- windows --------------------------------------------------------------------------------

    def windows_for(self, model: str, user: str | None) -> list[Window]:
        return [self.window(limit, key_for(limit, model, user)) for limit in self.spec.limits or []]

    def seed(self, limit: Limit, key: str | None, slots: Iterable[tuple[dt.datetime, Decimal]]) -> None:
        """Count what an earlier process of this pod counted in one window (checkpoint.py restores it):
        each slot's amount at the instant it started. Pass rolling slots newest first, so the counter never
        rescans its buckets for expired ones."""
        counter = self.window(limit, key).counter
        for start, amount in slots:
            counter.add(amount, start)

    def window(self, limit: Limit, key: str | None) -> Window:
        """The window of `limit` (and `key`), made on first use; per-key windows beyond the cap evict the
        least recently used."""
        window = self.windows.pop((limit.name, key), None)  # re-insert: most recently used last
        if window is None:
            window = self._new_window(limit, key)
            if (limit.per is not None and len(self.windows) >= MAX_KEYS_PER_LIMIT  # else no limit can be full
                    and sum(1 for k in self.windows if k[0] == limit.name) >= MAX_KEYS_PER_LIMIT):
                oldest = next(k for k in self.windows if k[0] == limit.name)
                del self.windows[oldest]
        self.windows[(limit.name, key)] = window
        return window

    def _new_window(self, limit: Limit, key: str | None) -> Window:
        return Window(limit, key, window_for(limit, self.spec.time_zone, self.clock), self.grants_for(limit, key))

    def shape(self, limit: Limit) -> list[str | None]:
        """What a window's counts depend on: the same shape in a new policy keeps them (adopt, checkpoint)."""
        return [limit.period.value if limit.period else None, limit.duration,
                limit.per.value if limit.per else None, unit_of(limit), self.spec.time_zone]

    def contributions(self, spend: Spend) -> list[tuple[Limit, str | None, Decimal]]:
        """Where `spend` counts: (limit, key, amount) for every limit it adds a non-zero amount to.

        The one attribution rule for every replay of settled use (ledger records, checkpoint), the same
        as settlement's: a zero amount is not counted, so it makes no window.
        """
        out = []
        for limit in self.spec.limits or []:
            amount = spend.of(limit)
            if amount:
                out.append((limit, key_for(limit, spend.model, spend.user), amount))
        return out

    def count(self, spend: Spend) -> None:
        """Count settled use again in this budget's windows, at the instant it was spent."""
        for limit, key, amount in self.contributions(spend):
            self.window(limit, key).counter.add(amount, spend.at)

    def grants_for(self, limit: Limit, key: str | None) -> tuple[Lease, ...]:
        """The grants a window admits against: its own, else (per-key limit) the ones every key shares."""
        found = self.leases.get((limit.name, key))
        if found is None and key is not None and limit.per is not None:
            found = self.leases.get((limit.name, None))
        return found or ()

    def adopt(self, old: BudgetState) -> None:
        """Carry use, holds and ladder state over a policy push, for windows whose shape is unchanged."""
        self.reservations, self.would_have = old.reservations, old.would_have
        self.throttle_next, self.alerts = old.throttle_next, old.alerts
        self.history_lost_before = old.history_lost_before
        limits = {lim.name: lim for lim in self.spec.limits or []}
        same_ladder = old.ladder.steps == self.ladder.steps
        for (name, key), window in old.windows.items():
            new = limits.get(name)
            if new is None or self.shape(new) != old.shape(window.limit):
                continue  # another window now (or the period boundaries moved): it starts afresh
            window.limit, window.grants = new, self.grants_for(new, key)
            window.step = window.step if same_ladder else -1
            self.windows[(name, key)] = window

    # ----- the ladder and lazy holds --------------------------------------------------------------

    def _step(self, window: Window, now: dt.datetime) -> int:
        """The ladder index in force for a window, moving down only past the hysteresis margin."""
        if self.ladder.ambiguous(window, now):
            self.tighten(window)  # the bounds straddle a step: decide on exact figures
        self.alerts.extend(self.ladder.place(window, now))
        return window.step

    def active_steps(self, windows: Iterable[Window], now: dt.datetime) -> list[LadderStep]:
        top = max((self._step(w, now) for w in windows), default=-1)
        return self.ladder.steps[: top + 1]

    def stage(self, windows: Iterable[Window] | None = None) -> Stage:
        now = self.clock.now()
        steps = self.active_steps(self.windows.values() if windows is None else windows, now)
        return Stage(steps[-1].action.value) if steps else Stage.NORMAL

    def lazy_prompts(self, window: Window) -> list[PromptCount]:
        """The prompts behind `window`'s lazy holds, for admission to count off the loop before deciding."""
        return [p for rid in window.lazy if (r := self.reservations.get(rid)) and (p := r.prompt) is not None]

    def tighten(self, window: Window) -> None:
        """Make every lazy hold in `window` exact (in all its windows): after this, decisions in it are those
        of always-exact counting."""
        for rid in list(window.lazy):
            reservation = self.reservations.get(rid)
            if reservation is None:
                window.lazy.pop(rid, None)
                continue
            reservation.make_exact()

    # ----- admission ------------------------------------------------------------------------------

    def models_allowed(self, model: str) -> bool:
        allow = (self.spec.models.allow if self.spec.models else None) or []
        return not allow or any(fnmatch.fnmatchcase(model, pattern) for pattern in allow)

    def reserve(self, windows: list[Window], demand: Demand, ttl: dt.timedelta, prompt: PromptCount | None = None,
                demand_of: Callable[[int], Demand] | None = None, refused: bool = False) -> Reservation:
        """Hold `demand` in every window, or raise Refused.

        In DryRun nothing is refused: a call that fits is held as enforcement would hold it; one that would
        have been refused (here, or already by `refused`: a cap or the ladder's Block) holds nothing and will
        count nothing, as under enforcement (UsageRecord.counted_budgets), so the dry run's windows and its
        would-have counts follow what its enforcing twin would do instead of running ahead of it.

        With `prompt` not yet counted exactly, `demand` is its upper bound (`demand_of(prompt.high)`): held
        as is where it fits with room to spare; where it does not fit, or lazy holds of earlier calls fill
        the room, everything involved is counted exactly first, so the answer is always-exact counting's.
        """
        now = self.clock.now()
        lazy = prompt if prompt is not None and not prompt.known else None
        for window in windows:
            amount = demand.of(window.limit)
            if amount is None or not (amount > window.room(now) or (lazy and self.ladder.ambiguous(window, now))):
                continue
            if lazy is None:
                self.tighten(window)  # earlier lazy holds may be what fills the room
            elif demand_of is not None:  # this call's bound does not fit: exact figures everywhere
                for w in windows:
                    self.tighten(w)
                demand, lazy = demand_of(lazy.count_now()), None
                break
        reservation = self._reserve(windows, demand, ttl, now, refused)
        if lazy is not None and demand_of is not None:
            reservation.hold_lazily(lazy, demand_of)
        return reservation

    def _reserve(self, windows: list[Window], demand: Demand, ttl: dt.timedelta, now: dt.datetime,
                 refused: bool = False) -> Reservation:
        holds: list[tuple[Window, Decimal]] = []
        decisions: list[Action] = []
        lost = self.history_lost_before
        for window in windows:
            amount = demand.of(window.limit)
            lease = window.lease(now)
            if lease is not None and not window.lease_holds(lease, amount, now):
                if self.spec.fail_mode is FailMode.OPEN:
                    continue  # Open: admit without checking this shared window until a grant arrives
                if not self.dry_run:
                    raise Refused(429, refusal_reasons.no_grant(self.name, window, lease, now), LEASE_ROUND_S,
                                  awaits_grant=True, budget=self.name)
                decisions.append(Action.BLOCK)
            clears = window.history_clears_at(lost, now)
            if clears is not None and self.spec.fail_mode is FailMode.CLOSED:
                if not self.dry_run:
                    assert lost is not None  # nothing clears where nothing was lost
                    raise Refused(429, refusal_reasons.history_unknown(self.name, window, lost, clears),
                                  max((clears - now).total_seconds(), 1.0))
                decisions.append(Action.BLOCK)
            if amount is None:
                raise Refused(400, refusal_reasons.no_price(self.name, window))
            if amount > window.room(now):
                if not self.dry_run:
                    retry, grant = refusal_reasons.retry_after(window, amount, now)
                    raise Refused(429, refusal_reasons.exhausted(self.name, window, amount, now, grant), retry,
                                  awaits_grant=grant, budget=self.name)
                decisions.append(Action.BLOCK)
            holds.append((window, amount))
        if self.dry_run and (refused or Action.BLOCK in decisions):
            holds = []  # enforcement would not have let it spend
        reservation = Reservation.take(self.name, holds, now + ttl, decisions)
        self.reservations[reservation.id] = reservation
        return reservation

    def throttle_delay(self, rate_per_minute: float) -> float:
        """Seconds to wait so admissions keep to the rate; the caller refuses if it is too long."""
        now = self.clock.now()
        interval = dt.timedelta(seconds=60 / rate_per_minute)
        start = max(self.throttle_next or now, now)
        self.throttle_next = start + interval
        return (start - now).total_seconds()

    def release(self, reservation: Reservation) -> None:
        """Give back the holds of a call that was never forwarded: nothing is counted, not even a request
        (its record says refused, and no replay counts it either)."""
        if self.reservations.pop(reservation.id, None) is None:
            return
        reservation.give_back()

    def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal | None,
               started: dt.datetime | None = None, would: Iterable[str] = ()) -> None:
        """Replace the holds by actual use, exactly once; unknown reservations are ignored (expired).

        Use counts in the period the call started in (`started`), as the operator and a ledger replay
        count it: a call begun before midnight and settled after it belongs to the old day. `would` names
        what a DryRun budget would have done to the call (each action once), for `wouldHave`.
        """
        if self.reservations.pop(reservation.id, None) is None:
            return
        now = started or self.clock.now()
        reservation.give_back()
        for window, _ in reservation.holds:
            actual = spent_in(window.limit, tokens, cost_usd)
            if actual:
                window.counter.add(actual, now)
        for action in dict.fromkeys(would):
            counts = self.would_have.setdefault(action, WouldHave())
            counts.count += 1
            counts.tokens += tokens
            counts.cost_usd += cost_usd or Decimal(0)

    def expire(self) -> int:
        """Release reservations past their deadline (a bug or a lost call must not hold budget forever)."""
        now = self.clock.now()
        stale = [r for r in self.reservations.values() if r.expires_at <= now]
        for reservation in stale:
            self.reservations.pop(reservation.id)
            reservation.give_back()
        return len(stale)

    # ----- the operator's view --------------------------------------------------------------------

    def report(self, fullest_only: bool = False) -> BudgetReport:
        """What the operator reads to write status: use per window, stage, dry-run counts, leases.

        `fullest_only`: of a per-User/per-Model limit, only its fullest key (with `keys`, how many there
        are): all a lease round needs (leases.py folds keys into the fullest), and one entry instead of
        one per key (benchmarks/lease_round.py: 317 KB per pod per round with 1,000 users).
        """
        now = self.clock.now()
        self._ensure_leased_windows()
        chosen = list(self.windows.values())
        counts: dict[str, int] = {}
        if fullest_only:
            chosen, counts = fullest_keys(chosen, now)
        windows = [w.report(now, counts[w.limit.name] if fullest_only and w.key is not None else None)
                   for w in chosen]  # before stage(): it may make lazy holds exact
        return BudgetReport(
            name=self.name, generation=self.policy.generation, stage=self.stage(),
            enforcement=self.spec.enforcement, windows=windows, reservations=len(self.reservations),
            would_have={k: admin.WouldHave(count=v.count, tokens=v.tokens, cost_usd=v.cost_usd)
                        for k, v in self.would_have.items()},
        )

    def _ensure_leased_windows(self) -> None:
        """A leased window shows in snapshots before its first call, so the operator sees every grant held.

        Not the lease every key of a per-key limit shares: it has no window of its own, its keys show theirs.
        """
        limits = {lim.name: lim for lim in self.spec.limits or []}
        for name, key in self.leases:
            if (name, key) not in self.windows and name in limits and (key is not None or limits[name].per is None):
                self.windows[(name, key)] = self._new_window(limits[name], key)


__all__ = ["MAX_KEYS_PER_LIMIT", "BudgetState", "Refused", "WouldHave"]
