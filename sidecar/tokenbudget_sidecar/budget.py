"""One TokenBudget's accounting inside a sidecar: windows, reservations, the ladder and dry-run counts.

Admission reserves the worst case of a call (prompt + output cap at list price, and one request)
against every window that applies to it, settlement replaces the reservation with what the provider
reported. Because the event loop runs one admission at a time and the check and the reservation happen
without an await in between, concurrent calls can never together reserve more than a window's room:
the total settled can exceed a limit only by what a provider bills beyond the reserved cap.
"""

from __future__ import annotations

import collections
import datetime as dt
import fnmatch
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from tokenbudget_api import admin
from tokenbudget_api.admin import BudgetReport, LeaseReport, WindowReport
from tokenbudget_api.policy import BudgetPolicy, Lease
from tokenbudget_api.tokenbudget import Action, Enforcement, FailMode, LadderStep, Limit, LimitKey, Stage
from tokenbudget_api.usage import UsageRecord
from tokenbudget_api.windows import (
    Clock,
    RollingWindow,
    WindowCounter,
    limit_amount,
    percent_used,
    window_for,
)
from tokenbudget_sidecar.prompt_count import PromptCount

LEASE_LOW = Decimal("0.2")  # a lease with less than this share left asks the operator for more
LEASE_ROUND_S = 2.0  # Retry-After when a new grant is what is missing: the operator's default lease interval
HOLDS_SETTLE_S = 1.0  # Retry-After when calls in flight hold the room: it comes back as they settle
MAX_ALERTS = 1_000  # alerts kept for the operator's cursor; older ones are dropped (it pulls every round)
MAX_KEYS_PER_LIMIT = 10_000  # per-User/per-Model windows kept; the least recently used are dropped
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ids = itertools.count(1)
_alert_ids = itertools.count(1)


@dataclass(frozen=True)
class Demand:
    """What one call may consume at most, per unit of limit."""

    tokens: int
    cost_usd: Decimal | None  # None: the model has no price

    def of(self, limit: Limit) -> Decimal | None:
        if limit.tokens is not None:
            return Decimal(self.tokens)
        if limit.cost_usd is not None:
            return self.cost_usd
        return Decimal(1)


@dataclass(frozen=True)
class Spend:
    """What settled calls spent, as windows count it: one usage record, or a sum of records of one user and
    model within one second (checkpoint.py; no period or rolling bucket edge falls inside a second)."""

    user: str | None
    model: str
    at: dt.datetime
    tokens: int
    cost_usd: Decimal  # an unpriced model counts 0 in dollar limits, as settlement counts it
    requests: int = 1

    @classmethod
    def of_record(cls, record: UsageRecord) -> Spend:
        return cls(record.user, record.model, record.time, record.usage.total_tokens,
                   record.cost_usd if record.cost_usd is not None else Decimal(0))

    def of(self, limit: Limit) -> Decimal:
        """The amount in `limit`'s unit."""
        return spent_in(limit, self.tokens, self.cost_usd, self.requests)


def spent_in(limit: Limit, tokens: int, cost_usd: Decimal | None, requests: int = 1) -> Decimal:
    """Settled use in `limit`'s unit: settlement, replay and the checkpoint all count by this.

    An unpriced model never gets to settle under a dollar limit (refused at admission), so a missing cost
    means nothing billed.
    """
    if limit.tokens is not None:
        return Decimal(tokens)
    if limit.cost_usd is not None:
        return cost_usd if cost_usd is not None else Decimal(0)
    return Decimal(requests)


@dataclass
class Window:
    """One limit, or one key's share of a per-User/per-Model limit."""

    limit: Limit
    key: str | None
    counter: WindowCounter
    grants: tuple[Lease, ...] = ()  # its leases: this period's, and the next one's shortly before it starts
    reserved: Decimal = Decimal(0)
    step: int = -1  # index into the ladder in force for this window (hysteresis state)
    # Holds on a prompt's byte bound (prompt_count.py): reservation id -> how much the hold may exceed the
    # exact one (bound minus lower bound, in this window's unit). Decisions near them count exactly first.
    lazy: dict[int, Decimal] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.limit.name}[{self.key}]" if self.key else self.limit.name

    def lease(self, now: dt.datetime) -> Lease | None:
        """The grant in force at `now`: the latest one whose period has begun (else the earliest, stale)."""
        if len(self.grants) < 2:
            return self.grants[0] if self.grants else None
        begun = [g for g in self.grants if g.period_start is None or g.period_start <= now]
        if begun:
            return max(begun, key=lambda g: g.period_start or now)
        return min(self.grants, key=lambda g: g.period_start or now)

    def amount(self, now: dt.datetime) -> Decimal:
        """The limit, or the lease granted for the period at `now`."""
        lease = self.lease(now)
        return Decimal(lease.granted) if lease is not None else limit_amount(self.limit)

    def used(self, now: dt.datetime) -> Decimal:
        return self.counter.used(now)

    def budget_used(self, now: dt.datetime) -> Decimal:
        """What the whole fleet has consumed in this window, as far as this pod knows: the fleet's figure at
        the last lease round plus what this pod consumed since (a per-key window: the key's, when the round
        listed it, `Lease.key_used`); its own use alone when no operator told it more (standalone, an unlisted
        key, a lease of another period).

        The ladder, `x-tokenbudget-remaining` and the report's percent all read this, so they speak of the
        budget (as `kubectl get tb` does), while admission still holds against this pod's grant (`room`).
        """
        own = self.used(now) + self.reserved
        lease = self.lease(now)
        if lease is None or (lease.period_start is not None and lease.period_start != self.counter.period_start(now)):
            return own
        if self.key is None and lease.fleet_used is not None:
            return max(lease.fleet_used - (lease.own_used or Decimal(0)), Decimal(0)) + own
        if self.key is not None and (figure := (lease.key_used or {}).get(self.key)) is not None:
            return max(figure.fleet - figure.own, Decimal(0)) + own
        return own

    def percent(self, now: dt.datetime) -> int:
        """The budget's percent used (fleet-wide when leased, see budget_used), not the grant's."""
        return percent_used(self.budget_used(now), limit_amount(self.limit))

    def percent_low(self, now: dt.datetime) -> int:
        """The percent if every lazy hold were at its prompt's lower bound: the exact one lies in between."""
        return percent_used(self.budget_used(now) - sum(self.lazy.values(), Decimal(0)), limit_amount(self.limit))

    def budget_remaining(self, now: dt.datetime) -> Decimal:
        return max(limit_amount(self.limit) - self.budget_used(now), Decimal(0))

    def room(self, now: dt.datetime) -> Decimal:
        return self.amount(now) - self.used(now) - self.reserved


@dataclass
class Reservation:
    id: int
    budget: str
    holds: list[tuple[Window, Decimal]]
    expires_at: dt.datetime
    decisions: list[Action] = field(default_factory=list)  # what enforcement did (or would have, in DryRun)
    # A hold on the prompt's byte bound: how to make it exact when a decision needs that (tighten()).
    prompt: PromptCount | None = None
    demand_of: Callable[[int], Demand] | None = None


@dataclass(frozen=True)
class Alert:
    """A ladder step reached by a window: logged, counted, and pulled by the operator as an Event."""

    seq: int
    budget: str
    window: str
    stage: Stage
    percent: int
    time: dt.datetime


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
        self.ladder: list[LadderStep] = list(self.spec.ladder or [])
        self.windows: dict[tuple[str, str | None], Window] = {}
        self.reservations: dict[int, Reservation] = {}
        self.would_have: dict[str, WouldHave] = {}
        self.throttle_next: dt.datetime | None = None
        self.leases: dict[tuple[str, str | None], tuple[Lease, ...]] = {}
        for lease in policy.leases or []:
            self.leases[lease.window, lease.key] = (*self.leases.get((lease.window, lease.key), ()), lease)
        self.alerts: collections.deque[Alert] = collections.deque(maxlen=MAX_ALERTS)
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

    def key_for(self, limit: Limit, model: str, user: str | None) -> str | None:
        """The window key of a call in `limit`: its user or model for a per-key limit, else None."""
        if limit.per is LimitKey.USER:
            return user or "anonymous"
        if limit.per is LimitKey.MODEL:
            return model
        return None

    def windows_for(self, model: str, user: str | None) -> list[Window]:
        return [self.window(limit, self.key_for(limit, model, user)) for limit in self.spec.limits or []]

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
            window = Window(limit, key, window_for(limit, self.spec.time_zone, self.clock),
                            self.grants_for(limit, key))
            if (limit.per is not None and len(self.windows) >= MAX_KEYS_PER_LIMIT  # else no limit can be full
                    and sum(1 for k in self.windows if k[0] == limit.name) >= MAX_KEYS_PER_LIMIT):
                oldest = next(k for k in self.windows if k[0] == limit.name)
                del self.windows[oldest]
        self.windows[(limit.name, key)] = window
        return window

    def shape(self, limit: Limit) -> list[str | None]:
        """What a window's counts depend on: the same shape in a new policy keeps them (adopt, checkpoint)."""
        return [limit.period.value if limit.period else None, limit.duration,
                limit.per.value if limit.per else None, _unit(limit), self.spec.time_zone]

    def contributions(self, spend: Spend) -> list[tuple[Limit, str | None, Decimal]]:
        """Where `spend` counts: (limit, key, amount) for every limit it adds a non-zero amount to.

        The one attribution rule for every replay of settled use (ledger records, checkpoint), the same
        as settlement's: a zero amount is not counted, so it makes no window.
        """
        out = []
        for limit in self.spec.limits or []:
            amount = spend.of(limit)
            if amount:
                out.append((limit, self.key_for(limit, spend.model, spend.user), amount))
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
        same_ladder = old.ladder == self.ladder
        for (name, key), window in old.windows.items():
            new = limits.get(name)
            if new is None or self.shape(new) != old.shape(window.limit):
                continue  # another window now (or the period boundaries moved): it starts afresh
            window.limit, window.grants = new, self.grants_for(new, key)
            window.step = window.step if same_ladder else -1
            self.windows[(name, key)] = window

    # ----- the ladder -----------------------------------------------------------------------------

    def _next_step(self, step: int, pct: int) -> int:
        """Where the ladder goes from `step` at `pct`: up past each threshold reached, down only past the
        hysteresis margin. Monotone in `pct`, so two bounds that agree pin the exact percent's answer."""
        i = step
        while i + 1 < len(self.ladder) and pct >= self.ladder[i + 1].at:
            i += 1
        while i >= 0 and pct < self.ladder[i].at - self.spec.hysteresis_percent:
            i -= 1
        return i

    def _step(self, window: Window, now: dt.datetime) -> int:
        """The ladder index in force for a window, moving down only past the hysteresis margin."""
        if window.lazy and (self._next_step(window.step, window.percent_low(now))
                            != self._next_step(window.step, window.percent(now))):
            self.tighten(window)  # the bounds straddle a step: decide on exact figures
        pct = window.percent(now)
        i = self._next_step(window.step, pct)
        for up in range(window.step + 1, i + 1):
            self.alerts.append(Alert(next(_alert_ids), self.name, window.label,
                                     Stage(self.ladder[up].action.value), pct, now))
        window.step = i
        return i

    def ambiguous(self, window: Window, now: dt.datetime) -> bool:
        """Whether the lazy holds in `window` leave its ladder step in doubt (admission counts them first)."""
        return bool(window.lazy) and (self._next_step(window.step, window.percent_low(now))
                                      != self._next_step(window.step, window.percent(now)))

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
            self._tighten(reservation)

    def _tighten(self, reservation: Reservation) -> None:
        prompt, demand_of = reservation.prompt, reservation.demand_of
        if prompt is None or demand_of is None:
            return
        demand = demand_of(prompt.count_now())
        holds = []
        for w, amount in reservation.holds:
            exact = demand.of(w.limit)
            new = amount if exact is None else min(exact, amount)
            w.reserved -= amount - new
            w.lazy.pop(reservation.id, None)
            holds.append((w, new))
        reservation.holds, reservation.prompt, reservation.demand_of = holds, None, None

    def active_steps(self, windows: Iterable[Window], now: dt.datetime) -> list[LadderStep]:
        top = max((self._step(w, now) for w in windows), default=-1)
        return self.ladder[: top + 1]

    def stage(self, windows: Iterable[Window] | None = None) -> Stage:
        now = self.clock.now()
        steps = self.active_steps(self.windows.values() if windows is None else windows, now)
        return Stage(steps[-1].action.value) if steps else Stage.NORMAL

    # ----- admission ------------------------------------------------------------------------------

    def models_allowed(self, model: str) -> bool:
        allow = (self.spec.models.allow if self.spec.models else None) or []
        return not allow or any(fnmatch.fnmatchcase(model, pattern) for pattern in allow)

    def reserve(self, windows: list[Window], demand: Demand, ttl: dt.timedelta, prompt: PromptCount | None = None,
                demand_of: Callable[[int], Demand] | None = None) -> Reservation:
        """Hold `demand` in every window, or raise Refused (in DryRun: record, then hold anyway).

        With `prompt` not yet counted exactly, `demand` is its upper bound (`demand_of(prompt.high)`): held
        as is where it fits with room to spare; where it does not fit, or lazy holds of earlier calls fill
        the room, everything involved is counted exactly first, so the answer is always-exact counting's.
        """
        now = self.clock.now()
        lazy = prompt if prompt is not None and not prompt.known else None
        for window in windows:
            amount = demand.of(window.limit)
            if amount is None or not (amount > window.room(now) or (lazy and self.ambiguous(window, now))):
                continue
            if lazy is None:
                self.tighten(window)  # earlier lazy holds may be what fills the room
            elif demand_of is not None:  # this call's bound does not fit: exact figures everywhere
                for w in windows:
                    self.tighten(w)
                demand, lazy = demand_of(lazy.count_now()), None
                break
        reservation = self._reserve(windows, demand, ttl, now)
        if lazy is not None and demand_of is not None:
            low = demand_of(lazy.low)
            reservation.prompt, reservation.demand_of = lazy, demand_of
            for window, amount in reservation.holds:
                floor = low.of(window.limit)
                window.lazy[reservation.id] = amount - (floor if floor is not None else amount)
        return reservation

    def _reserve(self, windows: list[Window], demand: Demand, ttl: dt.timedelta, now: dt.datetime) -> Reservation:
        holds: list[tuple[Window, Decimal]] = []
        decisions: list[Action] = []
        for window in windows:
            amount = demand.of(window.limit)
            lease = window.lease(now)
            if lease is not None and not self._lease_holds(window, lease, amount, now):
                if self.spec.fail_mode is FailMode.OPEN:
                    continue  # Open: admit without checking this shared window until a grant arrives
                if not self.dry_run:
                    raise Refused(429, self._no_grant(window, lease, now), LEASE_ROUND_S, awaits_grant=True,
                                  budget=self.name)
                decisions.append(Action.BLOCK)
            clears = self.history_clears_at(window, now)
            if clears is not None and self.spec.fail_mode is FailMode.CLOSED:
                if not self.dry_run:
                    raise Refused(429, self._unknown(window, clears), max((clears - now).total_seconds(), 1.0))
                decisions.append(Action.BLOCK)
            if amount is None:
                raise Refused(400, f"model has no price, so budget {self.name} cannot check its dollar limit "
                              f"{window.limit.name}; add it under spec.models.prices")
            if amount > window.room(now):
                if not self.dry_run:
                    retry, grant = self._retry_after(window, amount, now)
                    raise Refused(429, self._exhausted(window, amount, now), retry, awaits_grant=grant,
                                  budget=self.name)
                decisions.append(Action.BLOCK)
            holds.append((window, amount))
        reservation = Reservation(next(_ids), self.name, holds, now + ttl, decisions)
        for window, amount in holds:
            window.reserved += amount
        self.reservations[reservation.id] = reservation
        return reservation

    @staticmethod
    def _lease_holds(window: Window, lease: Lease, amount: Decimal | None, now: dt.datetime) -> bool:
        """Whether the grant still decides: it is this period's, and it is current or still has room.

        An expired grant keeps admitting what it granted (the operator counts it as held until the pod
        reports a new one), so an operator or apiserver outage stops no call that grants already cover;
        failMode decides only once the grant is spent and was not renewed, or a period began without one.
        """
        if lease.period_start is not None and lease.period_start != window.counter.period_start(now):
            return False
        return lease.expires_at > now or (amount is not None and amount <= window.room(now))

    def _no_grant(self, window: Window, lease: Lease, now: dt.datetime) -> str:
        where = f"tokenbudget: budget {self.name} limit {window.label}"
        if lease.period_start is not None and lease.period_start != window.counter.period_start(now):
            return f"{where} has no lease for this period yet (failMode Closed)"
        return (f"{where}: this pod's lease of {lease.granted} is spent and expired at "
                f"{lease.expires_at.isoformat()} without renewal (failMode Closed)")

    def history_clears_at(self, window: Window, now: dt.datetime) -> dt.datetime | None:
        """When `window` stops counting any instant before `history_lost_before`; None if it already has.

        Until then part of what it counts may be missing (the checkpoint was lost or unreadable), so the
        window cannot be checked: failMode Closed refuses in it, Open admits on what is known.
        """
        lost = self.history_lost_before
        if lost is None or window.counter.period_start(now) > lost:
            return None
        counter = window.counter
        if isinstance(counter, RollingWindow):  # the lost instant's bucket leaves the window
            granularity = dt.timedelta(seconds=counter.granularity)
            bucket = _EPOCH + (lost - _EPOCH) // granularity * granularity
            return bucket + granularity + dt.timedelta(seconds=counter.seconds)
        return counter.resets_at(now)  # a calendar period: the next one starts after the loss

    def _unknown(self, window: Window, clears: dt.datetime) -> str:
        lost = self.history_lost_before
        assert lost is not None
        return (f"tokenbudget: budget {self.name} limit {window.label} cannot be checked: what this pod spent "
                f"before {lost.isoformat()} is unknown (its usage checkpoint was lost or unreadable), so with "
                f"failMode Closed it admits nothing in this window until {clears.isoformat()}")

    def _exhausted(self, window: Window, amount: Decimal, now: dt.datetime) -> str:
        resets = window.counter.resets_at(now)
        when = f"; it frees up at {resets.isoformat()}" if resets else ""
        return (f"tokenbudget: budget {self.name} limit {window.label} has {max(window.room(now), Decimal(0))} "
                f"{_unit(window.limit)} left of {window.amount(now)} and this call may need {amount}{when}")

    def _retry_after(self, window: Window, amount: Decimal, now: dt.datetime) -> tuple[float | None, bool]:
        """Seconds until the cause of a refusal for want of room clears, and whether that cause is a missing
        grant: calls in flight settling (their holds fill the room), the next lease round (the budget has
        room, this pod's grant has not), or the settled use ageing out (a period's end, a rolling bucket's
        expiry); None when waiting never helps."""
        if amount <= window.room(now) + window.reserved:
            return HOLDS_SETTLE_S, False
        lease = window.lease(now)
        if lease is not None and window.key is None and amount <= window.budget_remaining(now):
            return LEASE_ROUND_S, True
        fits = window.counter.available_at(amount, window.amount(now) - window.reserved, now)
        return (max((fits - now).total_seconds(), 1.0) if fits is not None else None), False

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
        for window, amount in reservation.holds:
            window.reserved -= amount
            window.lazy.pop(reservation.id, None)

    def settle(self, reservation: Reservation, tokens: int, cost_usd: Decimal | None,
               started: dt.datetime | None = None) -> None:
        """Replace the holds by actual use, exactly once; unknown reservations are ignored (expired).

        Use counts in the period the call started in (`started`), as the operator and a ledger replay
        count it: a call begun before midnight and settled after it belongs to the old day.
        """
        if self.reservations.pop(reservation.id, None) is None:
            return
        now = started or self.clock.now()
        for window, amount in reservation.holds:
            window.reserved -= amount
            window.lazy.pop(reservation.id, None)
            actual = spent_in(window.limit, tokens, cost_usd)
            if actual:
                window.counter.add(actual, now)
        for action in reservation.decisions:
            would = self.would_have.setdefault(action.value, WouldHave())
            would.count += 1
            would.tokens += tokens
            would.cost_usd += cost_usd or Decimal(0)

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
            chosen, counts = self._fullest_keys(chosen, now)
        windows = []
        for w in chosen:
            lease = w.lease(now)
            room = w.room(now)
            windows.append(WindowReport(
                name=w.limit.name, key=w.key, unit=_unit(w.limit), used=w.used(now), reserved=w.reserved,
                limit=w.amount(now), percent=w.percent(now), period_start=w.counter.period_start(now),
                resets_at=w.counter.resets_at(now),
                lease=None if lease is None else LeaseReport(
                    granted=lease.granted, remaining=max(room, Decimal(0)),
                    low=room < Decimal(lease.granted) * LEASE_LOW, expires_at=lease.expires_at),
                keys=counts[w.limit.name] if fullest_only and w.key is not None else None,
            ))
        return BudgetReport(
            name=self.name, generation=self.policy.generation, stage=self.stage(),
            enforcement=self.spec.enforcement, windows=windows, reservations=len(self.reservations),
            would_have={k: admin.WouldHave(count=v.count, tokens=v.tokens, cost_usd=v.cost_usd)
                        for k, v in self.would_have.items()},
        )

    @staticmethod
    def _fullest_keys(windows: list[Window], now: dt.datetime) -> tuple[list[Window], dict[str, int]]:
        """Whole windows, and of each per-key limit the key with the most used + reserved; keys per limit."""
        out: list[Window] = []
        fullest: dict[str, Window] = {}
        counts: dict[str, int] = {}
        for w in windows:
            if w.key is None:
                out.append(w)
                continue
            counts[w.limit.name] = counts.get(w.limit.name, 0) + 1
            top = fullest.get(w.limit.name)
            if top is None or w.used(now) + w.reserved > top.used(now) + top.reserved:
                fullest[w.limit.name] = w
        return out + list(fullest.values()), counts

    def _ensure_leased_windows(self) -> None:
        """A leased window shows in snapshots before its first call, so the operator sees every grant held.

        Not the lease every key of a per-key limit shares: it has no window of its own, its keys show theirs.
        """
        limits = {lim.name: lim for lim in self.spec.limits or []}
        for name, key in self.leases:
            if (name, key) not in self.windows and name in limits and (key is not None or limits[name].per is None):
                limit = limits[name]
                self.windows[(name, key)] = Window(limit, key, window_for(limit, self.spec.time_zone, self.clock),
                                                   self.grants_for(limit, key))

    def expire(self) -> int:
        """Release reservations past their deadline (a bug or a lost call must not hold budget forever)."""
        now = self.clock.now()
        stale = [r for r in self.reservations.values() if r.expires_at <= now]
        for reservation in stale:
            self.reservations.pop(reservation.id)
            for window, amount in reservation.holds:
                window.reserved -= amount
                window.lazy.pop(reservation.id, None)
        return len(stale)


def _unit(limit: Limit) -> str:
    return "tokens" if limit.tokens is not None else ("USD" if limit.cost_usd is not None else "requests")


__all__ = ["Alert", "BudgetState", "Demand", "Refused", "Reservation", "Spend", "Window", "WouldHave"]
