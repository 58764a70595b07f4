"""Budget windows: where a period starts and ends, and how much of a limit was used in it.

The sidecar (admission, Retry-After, decision headers) and the operator (status, leases per period)
must agree to the microsecond on where a window begins and ends, so both use this one pure module:
stdlib `zoneinfo`/`datetime`/`decimal` and the API models, nothing else. Every instant it returns is an
aware UTC `datetime`; every amount is a `Decimal` (tokens, requests or US dollars, never a float).

Calendar periods (`Limit.period`) live in the budget's IANA time zone (`spec.timeZone`). What a period
means on the days the clocks change:

* **Day, Week, Month** start at the *first* instant the local clock reads 00:00 on their first day (the
  day itself, the ISO week's Monday, the 1st of the month). So a day is 23 or 25 hours long on DST days,
  and when a zone falls back over midnight (America/Havana, 2024-11-03: 01:00 → 00:00) the day starts
  at the first of the two midnights and keeps the repeated hour. When a zone skips midnight
  (America/Santiago 2022-09-11, Asia/Beirut 2022-03-27: 00:00 → 01:00) the day starts at the first
  instant that exists after it, i.e. the transition itself (local 01:00). A day skipped entirely
  (Pacific/Apia, 2011-12-30) is an empty period that no instant falls into.
* **Hour, Minute** are the stretches of absolute time during which the local clock stays within one
  wall-clock hour (minute) *and the UTC offset does not change*. A repeated hour on a fall-back night is
  therefore two periods of 60 minutes each (New York, 2024-11-03: 01:00-02:00 EDT, then 01:00-02:00 EST),
  never one 120-minute hour, and the hour after a spring-forward gap is a normal 60 minutes. Only when a
  zone shifts by a fraction of an hour does an hour period come out shorter: Australia/Lord_Howe moves
  by 30 minutes, so its local 01:30-02:00 after falling back, and 02:30-03:00 after springing forward,
  are 30-minute periods. A period never lasts more than one unit of absolute time.

Rolling windows (`Limit.duration`, D seconds) keep usage in buckets aligned to the Unix epoch (so every
process draws the same bucket edges) of `rolling_granularity(D)` = max(1 s, ceil(D / 120)) seconds,
hence at most 121 buckets alive however long the window. An amount is counted from its bucket onwards until
D seconds after its bucket *ends*: at least D seconds, less than D + granularity. Erring on the side of
holding usage a little longer means no span of D seconds can ever hold more than the limit.

Counters are not thread-safe: the sidecar uses them from its one event loop.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Callable
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tokenbudget_api.tokenbudget import Limit, Period

UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = dt.timedelta(microseconds=1)
_US_PER_S = 1_000_000
ZERO = Decimal(0)

ROLLING_BUCKETS = 120
"""Buckets a rolling window is cut into; windows under 120 s use 1-second buckets, so fewer of them."""

# Budget sums must be exact: 60 significant digits hold any sum of Money (12 + 9 digits) or token
# counts (≤ 10^15) a pod will ever see, and the traps turn a silent rounding into an error.
_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, DivisionByZero, Overflow])


# ----- clocks ------------------------------------------------------------------------------------------


@runtime_checkable
class Clock(Protocol):
    """Where "now" comes from, so tests can cross a midnight or a DST change without waiting."""

    def now(self) -> dt.datetime:
        """The current instant, an aware datetime in UTC."""
        ...


class SystemClock:
    """The wall clock of the machine (UTC). Not monotonic: an NTP step moves it, like the period edges."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to; for tests of the windows and of the sidecar."""

    def __init__(self, start: dt.datetime) -> None:
        self._now = as_utc(start)

    def now(self) -> dt.datetime:
        return self._now

    def set(self, at: dt.datetime) -> None:
        """Jump to `at` (aware; any zone), forwards or backwards."""
        self._now = as_utc(at)

    def advance(self, by: dt.timedelta | int) -> dt.datetime:
        """Move forward by a timedelta or a whole number of seconds; returns the new now."""
        step = by if isinstance(by, dt.timedelta) else dt.timedelta(seconds=by)
        self._now += step
        return self._now


def as_utc(at: dt.datetime) -> dt.datetime:
    """`at` in UTC; a naive datetime is refused, since guessing its zone would move a boundary by hours."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} is naive: pass an aware datetime (e.g. tzinfo=datetime.UTC)")
    return at.astimezone(UTC)


# ----- calendar periods --------------------------------------------------------------------------------


def zone(tz_name: str) -> ZoneInfo:
    """The IANA zone by name (ZoneInfo caches instances, so this is cheap to call per request)."""
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{tz_name!r} is not an IANA time zone") from exc


def period_bounds(period: Period, tz_name: str, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The calendar `period` in zone `tz_name` that contains instant `at`, as aware UTC `(start, end)`.

    `start <= at < end`, and `period_bounds(period, tz, end)[0] == end`: consecutive periods tile time
    with no gap and no overlap. See the module docstring for what Hour and Day mean on DST days.
    """
    tz = zone(tz_name)
    at = as_utc(at)
    if period is Period.MINUTE:
        return _clock_unit_bounds(tz, at, dt.timedelta(minutes=1))
    if period is Period.HOUR:
        return _clock_unit_bounds(tz, at, dt.timedelta(hours=1))
    return _date_bounds(tz, period, at)


def _offset(tz: ZoneInfo, at: dt.datetime) -> dt.timedelta:
    offset = at.astimezone(tz).utcoffset()
    assert offset is not None  # a ZoneInfo always has an offset for an aware instant
    return offset


def _local(tz: ZoneInfo, at: dt.datetime) -> dt.datetime:
    """The naive wall-clock reading in `tz` at UTC instant `at`."""
    return at.astimezone(tz).replace(tzinfo=None)


def _first_instant(lo: dt.datetime, hi: dt.datetime, pred: Callable[[dt.datetime], bool]) -> dt.datetime:
    """The earliest instant in (lo, hi] where `pred` holds, given it fails at lo, holds at hi, flips once.

    Bisection to the microsecond: at most ~32 steps for the hour-wide spans used here.
    """
    lo_us = (lo - _EPOCH) // _MICRO
    hi_us = (hi - _EPOCH) // _MICRO
    while hi_us - lo_us > 1:
        mid = (lo_us + hi_us) // 2
        if pred(_EPOCH + mid * _MICRO):
            hi_us = mid
        else:
            lo_us = mid
    return _EPOCH + hi_us * _MICRO


def _clock_unit_bounds(tz: ZoneInfo, at: dt.datetime, unit: dt.timedelta) -> tuple[dt.datetime, dt.datetime]:
    """Hour/Minute: the span around `at` where the local clock stays in one unit and the offset is fixed."""
    offset = _offset(tz, at)
    local = at.replace(tzinfo=None) + offset
    into_unit = (local - dt.datetime(1970, 1, 1)) % unit  # how far the local clock is into its hour/minute
    same_offset_start = at - into_unit
    same_offset_end = same_offset_start + unit
    start = same_offset_start
    if _offset(tz, same_offset_start) != offset:  # the offset changed after the clock last read :00
        start = _first_instant(same_offset_start, at, lambda t: _offset(tz, t) == offset)
    end = same_offset_end
    if _offset(tz, same_offset_end) != offset:  # it changes before the clock next reads :00
        end = _first_instant(at, same_offset_end, lambda t: _offset(tz, t) != offset)
    return start, end


def first_instant_of(tz: ZoneInfo, wall: dt.datetime) -> dt.datetime:
    """The first UTC instant at which the clock in `tz` reads naive `wall`, or jumps past it.

    An ambiguous reading (fall back) gives its first occurrence; a reading the clock skips (spring
    forward) gives the transition itself, the first instant that exists after it.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if _local(tz, first) == wall:
        return first
    # In a gap zoneinfo reads fold=0 with the offset from before the jump (an instant after it) and
    # fold=1 with the offset from after it (an instant before it): the jump lies between the two.
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(first, second), max(first, second)
    if _local(tz, hi) < wall or _local(tz, lo) >= wall:  # not a simple gap; never seen in tzdata
        return hi
    return _first_instant(lo, hi, lambda t: _local(tz, t) >= wall)


def _first_date(period: Period, day: dt.date) -> dt.date:
    if period is Period.DAY:
        return day
    if period is Period.WEEK:
        return day - dt.timedelta(days=day.weekday())  # ISO week: Monday
    return day.replace(day=1)


def _shift(period: Period, first: dt.date, steps: int) -> dt.date:
    """The first date of the period `steps` periods after (or before) the one starting on `first`."""
    if period is Period.DAY:
        return first + dt.timedelta(days=steps)
    if period is Period.WEEK:
        return first + dt.timedelta(weeks=steps)
    months = first.year * 12 + first.month - 1 + steps
    return dt.date(months // 12, months % 12 + 1, 1)


def _date_bounds(tz: ZoneInfo, period: Period, at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Day/Week/Month: from the first local midnight of the period's first day to that of the next one."""
    midnight = dt.time(0, 0)
    first = _first_date(period, _local(tz, at).date())
    # The local date almost always names the period; the loop covers a clock that fell back across
    # midnight, where an instant can carry yesterday's date after today's first midnight.
    for _ in range(4):
        start = first_instant_of(tz, dt.datetime.combine(first, midnight))
        following = _shift(period, first, 1)
        end = first_instant_of(tz, dt.datetime.combine(following, midnight))
        if at < start:
            first = _shift(period, first, -1)
        elif at >= end:
            first = following
        else:
            return start, end
    raise AssertionError(f"no {period} period found around {at.isoformat()} in {tz.key}")


# ----- rolling windows ---------------------------------------------------------------------------------


def rolling_granularity(seconds: int) -> int:
    """Bucket width in whole seconds for a rolling window of `seconds`: max(1, ceil(seconds / 120))."""
    if seconds < 1:
        raise ValueError("a rolling window lasts at least one second")
    return max(1, -(-seconds // ROLLING_BUCKETS))


def _us(at: dt.datetime) -> int:
    """Microseconds since the Unix epoch: integer arithmetic, so bucket edges are exact."""
    return (at - _EPOCH) // _MICRO


def _from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


# ----- counters ----------------------------------------------------------------------------------------


def as_amount(amount: Decimal | int) -> Decimal:
    """Tokens and requests (int) or dollars (Decimal) as a Decimal; floats are refused, like in the API."""
    if isinstance(amount, bool) or not isinstance(amount, Decimal | int):
        raise TypeError(f"amount must be a Decimal or an int, not {type(amount).__name__}")
    value = Decimal(amount)
    if not value.is_finite():
        raise ValueError(f"amount must be finite, not {value}")
    return value


class WindowCounter(abc.ABC):
    """Use of one limit (or one key of a per-User/per-Model limit) in its current window.

    Every method takes an optional `at` (aware datetime, default: the clock's now) so the enforcement
    code can stamp one decision with one instant. `add` takes negative amounts to give back part of a
    reservation (pass the reservation's own `at`, so it comes off the same period or bucket); use is
    clamped at zero, so a mistaken release can never make a budget look less spent than nothing.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def _at(self, at: dt.datetime | None) -> dt.datetime:
        return self.clock.now() if at is None else as_utc(at)

    @abc.abstractmethod
    def add(self, amount: Decimal | int, at: dt.datetime | None = None) -> bool:
        """Count `amount` (tokens, requests or USD) at `at`; False if that instant's window is over."""

    @abc.abstractmethod
    def used(self, at: dt.datetime | None = None) -> Decimal:
        """Amount counted in the window as it stands at `at` (never negative)."""

    @abc.abstractmethod
    def resets_at(self, at: dt.datetime | None = None) -> dt.datetime | None:
        """When use next drops: the period's end, or when the oldest counted rolling bucket expires."""

    @abc.abstractmethod
    def period_start(self, at: dt.datetime | None = None) -> dt.datetime:
        """The earliest instant whose usage still counts at `at`."""

    @abc.abstractmethod
    def available_at(
        self, amount: Decimal | int, limit: Decimal | int, at: dt.datetime | None = None
    ) -> dt.datetime | None:
        """Earliest instant ≥ `at` at which `amount` more fits under `limit`, if nothing else is added.

        For Retry-After; None when `amount` exceeds `limit` itself, so waiting would never help.
        """


class CalendarWindow(WindowCounter):
    """A calendar-period counter: starts from zero exactly at each period boundary in the budget's zone.

    Only the current period is kept (the ledger holds history). An amount stamped in an earlier period
    than the current one is dropped, so a call admitted before midnight and settled after it never
    leaks into the new day; `used` for an instant before the current period reports zero.
    """

    def __init__(self, period: Period, tz_name: str, clock: Clock) -> None:
        super().__init__(clock)
        zone(tz_name)  # fail now, not on the first request, for an unknown zone
        self.period = period
        self.tz_name = tz_name
        self._bounds: tuple[dt.datetime, dt.datetime] | None = None
        self._used = ZERO

    def bounds(self, at: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
        """`(start, end)` of the period containing `at`, from cache when it is the current one."""
        at = self._at(at)
        if self._bounds is not None and self._bounds[0] <= at < self._bounds[1]:
            return self._bounds
        return period_bounds(self.period, self.tz_name, at)

    def add(self, amount: Decimal | int, at: dt.datetime | None = None) -> bool:
        value = as_amount(amount)
        at = self._at(at)
        if self._bounds is None or at >= self._bounds[1]:
            self._bounds = period_bounds(self.period, self.tz_name, at)
            self._used = ZERO
        elif at < self._bounds[0]:
            return False
        self._used = max(ZERO, _EXACT.add(self._used, value))
        return True

    def used(self, at: dt.datetime | None = None) -> Decimal:
        at = self._at(at)
        if self._bounds is not None and self._bounds[0] <= at < self._bounds[1]:
            return self._used
        return ZERO

    def resets_at(self, at: dt.datetime | None = None) -> dt.datetime:
        return self.bounds(at)[1]

    def period_start(self, at: dt.datetime | None = None) -> dt.datetime:
        return self.bounds(at)[0]

    def available_at(
        self, amount: Decimal | int, limit: Decimal | int, at: dt.datetime | None = None
    ) -> dt.datetime | None:
        at = self._at(at)
        need, cap = as_amount(amount), as_amount(limit)
        if need > cap:
            return None
        if _EXACT.add(self.used(at), need) <= cap:
            return at
        return self.resets_at(at)


class RollingWindow(WindowCounter):
    """A rolling-duration counter: usage kept in epoch-aligned buckets, expiring bucket by bucket.

    Bucket b spans [b·g, (b+1)·g) seconds since the epoch (g = `granularity` seconds) and counts at
    instant x while b·g ≤ x < (b+1)·g + D. Memory is bounded by the buckets alive at the newest instant
    added (≤ ceil(D/g) + 1 ≤ 121); `used` is a sum over them. Usage is exact for `at` at or after the
    newest `add`; for earlier instants buckets already pruned are missing (the clock only goes forward
    in the sidecar).
    """

    def __init__(self, seconds: int, clock: Clock) -> None:
        super().__init__(clock)
        self.seconds = seconds
        self.granularity = rolling_granularity(seconds)
        self._g_us = self.granularity * _US_PER_S
        self._d_us = seconds * _US_PER_S
        self._buckets: dict[int, Decimal] = {}
        self._newest_us: int | None = None

    @property
    def bucket_count(self) -> int:
        """Buckets held in memory (bounded by ceil(D/g) + 1); for tests and metrics."""
        return len(self._buckets)

    def _expiry_us(self, bucket: int) -> int:
        return (bucket + 1) * self._g_us + self._d_us

    def _live(self, x_us: int) -> list[tuple[int, Decimal]]:
        """Buckets counted at instant x (µs), oldest first."""
        current = x_us // self._g_us
        return sorted(
            (b, v) for b, v in self._buckets.items() if b <= current and x_us < self._expiry_us(b)
        )

    def add(self, amount: Decimal | int, at: dt.datetime | None = None) -> bool:
        value = as_amount(amount)
        x_us = _us(self._at(at))
        bucket = x_us // self._g_us
        if self._newest_us is not None and self._expiry_us(bucket) <= self._newest_us:
            return False  # its bucket had already expired at the newest instant seen
        total = max(ZERO, _EXACT.add(self._buckets.get(bucket, ZERO), value))
        if total:
            self._buckets[bucket] = total
        else:
            self._buckets.pop(bucket, None)
        if self._newest_us is None or x_us > self._newest_us:
            self._newest_us = x_us
            for dead in [b for b in self._buckets if self._expiry_us(b) <= x_us]:
                del self._buckets[dead]
        return True

    def used(self, at: dt.datetime | None = None) -> Decimal:
        total = ZERO
        for _, value in self._live(_us(self._at(at))):
            total = _EXACT.add(total, value)
        return total

    def resets_at(self, at: dt.datetime | None = None) -> dt.datetime | None:
        live = self._live(_us(self._at(at)))
        return _from_us(self._expiry_us(live[0][0])) if live else None

    def period_start(self, at: dt.datetime | None = None) -> dt.datetime:
        x_us = _us(self._at(at))
        return _from_us((x_us - self._d_us) // self._g_us * self._g_us)

    def available_at(
        self, amount: Decimal | int, limit: Decimal | int, at: dt.datetime | None = None
    ) -> dt.datetime | None:
        at = self._at(at)
        need, cap = as_amount(amount), as_amount(limit)
        if need > cap:
            return None
        live = self._live(_us(at))
        remaining = ZERO
        for _, value in live:
            remaining = _EXACT.add(remaining, value)
        if _EXACT.add(remaining, need) <= cap:
            return at
        for bucket, value in live:
            remaining = _EXACT.subtract(remaining, value)
            if _EXACT.add(remaining, need) <= cap:
                return _from_us(self._expiry_us(bucket))
        raise AssertionError("unreachable: with every bucket expired, need <= cap fits")


# ----- helpers for enforcement -------------------------------------------------------------------------


def window_for(limit: Limit, tz_name: str, clock: Clock) -> WindowCounter:
    """A fresh counter for `limit`: calendar in `tz_name` when it has a period, rolling otherwise."""
    if limit.period is not None:
        return CalendarWindow(limit.period, tz_name, clock)
    seconds = limit.rolling_seconds
    if seconds is None:
        raise ValueError(f"limit {limit.name!r} has neither a period nor a duration")
    return RollingWindow(seconds, clock)


def limit_amount(limit: Limit) -> Decimal:
    """The limit's size in its own unit (tokens, requests or USD) as a Decimal."""
    if limit.tokens is not None:
        return Decimal(limit.tokens)
    if limit.cost_usd is not None:
        return limit.cost_usd
    if limit.requests is not None:
        return Decimal(limit.requests)
    raise ValueError(f"limit {limit.name!r} has no amount")


def percent_used(used: Decimal | int, limit_amount: Decimal | int) -> int:
    """Whole percent of `limit_amount` spent: rounded down (99.9 % is not yet 100), within 0..100.

    A zero limit counts as fully spent. Exact Decimal division, so 1 token short of a threshold
    never rounds up into it.
    """
    spent, cap = as_amount(used), as_amount(limit_amount)
    if spent <= 0:
        return 0 if cap > 0 else 100
    if spent >= cap:
        return 100
    return int(_EXACT.divide_int(_EXACT.multiply(spent, Decimal(100)), cap))  # both > 0: truncation is floor
