"""Budget windows reset at their calendar boundaries in the budget's zone, DST and odd offsets included,
and rolling windows forget usage exactly at their documented granularity."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbudget_api.tokenbudget import Limit, Period
from tokenbudget_api.windows import (
    CalendarWindow,
    Clock,
    ManualClock,
    RollingWindow,
    SystemClock,
    WindowCounter,
    first_instant_of,
    limit_amount,
    percent_used,
    period_bounds,
    rolling_granularity,
    window_for,
)

UTC = dt.UTC
SECOND = dt.timedelta(seconds=1)
MICRO = dt.timedelta(microseconds=1)
HOUR = dt.timedelta(hours=1)
ZONES = sorted(available_timezones())


def local(
    tz_name: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, *, fold: int = 0
) -> dt.datetime:
    """The UTC instant at which the clock in `tz_name` reads these fields (fold=1: the second reading).

    Converted to UTC because Python compares two datetimes of one zone by their wall clock, ignoring
    fold, and never finds an ambiguous reading equal to an instant in another zone (PEP 495).
    """
    fields = dt.datetime(year, month, day, hour, minute, second, fold=fold)
    return fields.replace(tzinfo=ZoneInfo(tz_name)).astimezone(UTC)


def wall(at: dt.datetime, tz_name: str) -> tuple[dt.datetime, dt.timedelta | None]:
    """What the clock in `tz_name` reads at `at`, with its UTC offset."""
    here = at.astimezone(ZoneInfo(tz_name))
    return here.replace(tzinfo=None), here.utcoffset()


def hours_of(period: Period, tz_name: str, first: dt.datetime, count: int) -> list[tuple[dt.datetime, dt.datetime]]:
    """`count` consecutive periods starting with the one that holds `first`."""
    out = [period_bounds(period, tz_name, first)]
    while len(out) < count:
        out.append(period_bounds(period, tz_name, out[-1][1]))
    return out


# ----- clocks ------------------------------------------------------------------------------------------


def test_the_manual_clock_moves_only_when_told_and_speaks_utc() -> None:
    clock = ManualClock(local("Australia/Sydney", 2024, 7, 1, 9, 0))
    assert clock.now() == dt.datetime(2024, 6, 30, 23, 0, tzinfo=UTC)
    assert clock.now().tzinfo is UTC
    assert clock.advance(90) == dt.datetime(2024, 6, 30, 23, 1, 30, tzinfo=UTC)
    clock.advance(dt.timedelta(minutes=-1, seconds=-30))
    assert clock.now() == dt.datetime(2024, 6, 30, 23, 0, tzinfo=UTC)
    clock.set(dt.datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.now() == dt.datetime(2030, 1, 1, tzinfo=UTC)
    assert isinstance(clock, Clock)
    assert isinstance(SystemClock(), Clock)


def test_the_system_clock_is_aware_utc() -> None:
    now = SystemClock().now()
    assert now.utcoffset() == dt.timedelta(0)
    assert abs(now - dt.datetime.now(UTC)) < dt.timedelta(seconds=5)


def test_naive_datetimes_are_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match="naive"):
        ManualClock(dt.datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        period_bounds(Period.DAY, "UTC", dt.datetime(2024, 1, 1))


def test_an_unknown_zone_fails_when_the_counter_is_built() -> None:
    with pytest.raises(ValueError, match="Mars"):
        CalendarWindow(Period.DAY, "Mars/Olympus_Mons", ManualClock(dt.datetime(2024, 1, 1, tzinfo=UTC)))


# ----- calendar days and midnight resets ---------------------------------------------------------------


def test_a_sydney_day_resets_at_local_midnight_not_a_day_after_the_first_request() -> None:
    tz = "Australia/Sydney"
    clock = ManualClock(local(tz, 2024, 6, 30, 18, 0))
    day = CalendarWindow(Period.DAY, tz, clock)
    assert day.add(100)  # the first request of the day comes at 18:00 local
    clock.set(local(tz, 2024, 6, 30, 23, 59, 59))
    assert day.add(Decimal(50))
    assert day.used() == 150
    assert day.resets_at() == local(tz, 2024, 7, 1, 0, 0) == dt.datetime(2024, 6, 30, 14, 0, tzinfo=UTC)
    assert day.period_start() == local(tz, 2024, 6, 30, 0, 0)

    clock.advance(1)  # 00:00:00 local
    assert day.used() == 0
    assert day.period_start() == local(tz, 2024, 7, 1, 0, 0)
    assert day.resets_at() == local(tz, 2024, 7, 2, 0, 0)
    assert day.add(7)
    # A call admitted at 23:59:59.5 and settled after midnight does not leak into the new day.
    assert not day.add(30, at=local(tz, 2024, 6, 30, 23, 59, 59) + dt.timedelta(milliseconds=500))
    assert day.used() == 7


def test_a_late_add_stamped_yesterday_is_dropped_even_before_anything_else_happens_today() -> None:
    tz = "Australia/Sydney"
    clock = ManualClock(local(tz, 2024, 6, 30, 23, 59, 59))
    day = CalendarWindow(Period.DAY, tz, clock)
    day.add(10)
    clock.set(local(tz, 2024, 7, 1, 0, 0, 0))
    assert day.used() == 0  # reading does not need an add to see the reset
    assert day.add(5)
    assert not day.add(10, at=local(tz, 2024, 6, 30, 23, 59, 59))
    assert day.used() == 5
    assert day.used(at=local(tz, 2024, 6, 30, 12, 0)) == 0  # history is the ledger's job, not the counter's


@pytest.mark.parametrize(
    ("tz", "date", "hours"),
    [
        ("Australia/Sydney", dt.date(2024, 10, 6), 23),  # 02:00 AEST -> 03:00 AEDT
        ("Australia/Sydney", dt.date(2024, 4, 7), 25),  # 03:00 AEDT -> 02:00 AEST
        ("America/New_York", dt.date(2024, 3, 10), 23),
        ("America/New_York", dt.date(2024, 11, 3), 25),
        ("Europe/Berlin", dt.date(2024, 3, 31), 23),
        ("Europe/Berlin", dt.date(2024, 10, 27), 25),
        ("Europe/Berlin", dt.date(2024, 7, 1), 24),
    ],
)
def test_dst_days_last_23_or_25_hours_from_local_midnight_to_local_midnight(
    tz: str, date: dt.date, hours: int
) -> None:
    noon = local(tz, date.year, date.month, date.day, 12, 0)
    start, end = period_bounds(Period.DAY, tz, noon)
    assert end - start == dt.timedelta(hours=hours)
    assert wall(start, tz)[0] == dt.datetime.combine(date, dt.time())
    assert wall(end, tz)[0] == dt.datetime.combine(date + dt.timedelta(days=1), dt.time())
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC


def test_a_day_counter_crosses_the_new_york_spring_forward_night_and_resets_once() -> None:
    tz = "America/New_York"
    clock = ManualClock(local(tz, 2024, 3, 9, 23, 30))
    day = CalendarWindow(Period.DAY, tz, clock)
    day.add(1)
    clock.advance(dt.timedelta(minutes=30))  # 00:00 on the DST day
    assert day.used() == 0
    day.add(2)
    clock.set(local(tz, 2024, 3, 10, 3, 0))  # 01:59:59 EST is followed by 03:00 EDT
    day.add(3)
    assert day.used() == 5
    assert day.resets_at() - day.period_start() == dt.timedelta(hours=23)


def test_a_skipped_local_midnight_starts_the_day_at_the_first_instant_after_it() -> None:
    # Santiago springs forward at 24:00 -> 01:00: local 2022-09-11 00:00 never happens.
    tz = "America/Santiago"
    start, end = period_bounds(Period.DAY, tz, local(tz, 2022, 9, 11, 12, 0))
    assert start == dt.datetime(2022, 9, 11, 4, 0, tzinfo=UTC)
    assert wall(start, tz) == (dt.datetime(2022, 9, 11, 1, 0), dt.timedelta(hours=-3))
    assert end - start == dt.timedelta(hours=23)
    before = period_bounds(Period.DAY, tz, start - MICRO)
    assert before == (dt.datetime(2022, 9, 10, 4, 0, tzinfo=UTC), start)  # 23:59:59.999999 -04 is yesterday
    # The week and the month that begin on such a day start there too.
    assert period_bounds(Period.MONTH, tz, local(tz, 2022, 9, 20, 0, 0))[0] == local(tz, 2022, 9, 1, 0, 0)


def test_a_wall_time_inside_a_gap_resolves_to_the_instant_the_clock_jumps_past_it() -> None:
    new_york = ZoneInfo("America/New_York")
    jump = dt.datetime(2024, 3, 10, 7, 0, tzinfo=UTC)  # 01:59:59 EST -> 03:00 EDT
    assert first_instant_of(new_york, dt.datetime(2024, 3, 10, 2, 30)) == jump
    assert first_instant_of(new_york, dt.datetime(2024, 3, 10, 2, 0)) == jump
    assert first_instant_of(new_york, dt.datetime(2024, 3, 10, 3, 0)) == jump
    # An ambiguous reading resolves to its first occurrence (EDT), not the second (EST).
    assert first_instant_of(new_york, dt.datetime(2024, 11, 3, 1, 30)) == dt.datetime(2024, 11, 3, 5, 30, tzinfo=UTC)


def test_beirut_skipped_midnight_gives_a_23_hour_day_starting_at_0100() -> None:
    tz = "Asia/Beirut"
    start, end = period_bounds(Period.DAY, tz, local(tz, 2022, 3, 27, 9, 0))
    assert wall(start, tz) == (dt.datetime(2022, 3, 27, 1, 0), dt.timedelta(hours=3))
    assert end - start == dt.timedelta(hours=23)


def test_a_repeated_local_midnight_starts_the_day_at_its_first_occurrence() -> None:
    # Havana falls back 01:00 CDT -> 00:00 CST: midnight of 2024-11-03 happens twice.
    tz = "America/Havana"
    second_half_hour = local(tz, 2024, 11, 3, 0, 30, fold=1)
    start, end = period_bounds(Period.DAY, tz, second_half_hour)
    assert start == local(tz, 2024, 11, 3, 0, 0, fold=0) == dt.datetime(2024, 11, 3, 4, 0, tzinfo=UTC)
    assert end - start == dt.timedelta(hours=25)
    assert period_bounds(Period.DAY, tz, start - MICRO)[1] == start


def test_a_calendar_day_the_zone_skipped_entirely_holds_no_instant() -> None:
    # Samoa jumped from 2011-12-29 24:00 (-10) to 2011-12-31 00:00 (+14).
    tz = "Pacific/Apia"
    jump = dt.datetime(2011, 12, 30, 10, 0, tzinfo=UTC)
    assert period_bounds(Period.DAY, tz, jump - MICRO) == (dt.datetime(2011, 12, 29, 10, 0, tzinfo=UTC), jump)
    start, end = period_bounds(Period.DAY, tz, jump)
    assert (start, end - start) == (jump, dt.timedelta(hours=24))
    assert wall(start, tz)[0] == dt.datetime(2011, 12, 31, 0, 0)


# ----- weeks and months --------------------------------------------------------------------------------


def test_weeks_start_on_monday_at_local_midnight() -> None:
    tz = "Australia/Sydney"
    sunday_night = local(tz, 2024, 7, 7, 23, 59, 59)
    start, end = period_bounds(Period.WEEK, tz, sunday_night)
    assert start == local(tz, 2024, 7, 1, 0, 0)  # Monday
    assert end == local(tz, 2024, 7, 8, 0, 0) == sunday_night + SECOND
    assert period_bounds(Period.WEEK, tz, end)[0] == end
    assert wall(end, tz)[0].isoweekday() == 1


def test_a_weekly_counter_resets_on_monday_not_seven_days_after_first_use() -> None:
    tz = "Europe/Berlin"
    clock = ManualClock(local(tz, 2024, 3, 27, 10, 0))  # a Wednesday
    week = CalendarWindow(Period.WEEK, tz, clock)
    week.add(500)
    assert week.resets_at() == local(tz, 2024, 4, 1, 0, 0)
    assert week.resets_at() - week.period_start() == dt.timedelta(days=7, hours=-1)  # the DST week
    clock.set(local(tz, 2024, 3, 31, 23, 59, 59))
    assert week.used() == 500
    clock.advance(1)
    assert week.used() == 0


@pytest.mark.parametrize("tz", ["Australia/Sydney", "America/New_York", "Europe/Berlin", "UTC"])
def test_month_ends_at_local_midnight_of_the_first_including_february_in_leap_years(tz: str) -> None:
    jan = period_bounds(Period.MONTH, tz, local(tz, 2024, 1, 31, 23, 59, 59))
    assert jan == (local(tz, 2024, 1, 1, 0, 0), local(tz, 2024, 2, 1, 0, 0))
    feb_leap = period_bounds(Period.MONTH, tz, jan[1])
    assert feb_leap == (jan[1], local(tz, 2024, 3, 1, 0, 0))
    assert period_bounds(Period.MONTH, tz, local(tz, 2024, 2, 29, 23, 59, 59))[1] == local(tz, 2024, 3, 1, 0, 0)
    feb_common = period_bounds(Period.MONTH, tz, local(tz, 2023, 2, 28, 23, 59, 59))
    assert feb_common == (local(tz, 2023, 2, 1, 0, 0), local(tz, 2023, 3, 1, 0, 0))
    dec = period_bounds(Period.MONTH, tz, local(tz, 2024, 12, 31, 12, 0))
    assert dec[1] == local(tz, 2025, 1, 1, 0, 0)


def test_a_monthly_dollar_counter_rolls_from_january_31_to_february_1_exactly() -> None:
    tz = "Australia/Sydney"
    clock = ManualClock(local(tz, 2024, 1, 31, 23, 59, 59))
    month = CalendarWindow(Period.MONTH, tz, clock)
    for _ in range(3):
        month.add(Decimal("0.1"))
    assert month.used() == Decimal("0.3")  # exact: no float ever touches the money
    clock.advance(1)
    assert month.used() == 0
    assert month.resets_at() == local(tz, 2024, 3, 1, 0, 0)


# ----- hours and minutes -------------------------------------------------------------------------------


def test_a_repeated_fall_back_hour_is_two_sixty_minute_hours_in_new_york() -> None:
    tz = "America/New_York"
    hours = hours_of(Period.HOUR, tz, local(tz, 2024, 11, 3, 0, 0), 4)
    assert [end - start for start, end in hours] == [HOUR] * 4
    assert [wall(start, tz) for start, _ in hours] == [
        (dt.datetime(2024, 11, 3, 0, 0), dt.timedelta(hours=-4)),
        (dt.datetime(2024, 11, 3, 1, 0), dt.timedelta(hours=-4)),  # 01:00 EDT
        (dt.datetime(2024, 11, 3, 1, 0), dt.timedelta(hours=-5)),  # 01:00 EST, the same reading again
        (dt.datetime(2024, 11, 3, 2, 0), dt.timedelta(hours=-5)),
    ]


@pytest.mark.parametrize(
    ("tz", "fall_back_utc"),
    [
        ("Australia/Sydney", dt.datetime(2024, 4, 6, 16, 0, tzinfo=UTC)),
        ("Europe/Berlin", dt.datetime(2024, 10, 27, 1, 0, tzinfo=UTC)),
    ],
)
def test_hours_around_a_fall_back_are_all_sixty_minutes(tz: str, fall_back_utc: dt.datetime) -> None:
    hours = hours_of(Period.HOUR, tz, fall_back_utc - 2 * HOUR, 5)
    assert [end - start for start, end in hours] == [HOUR] * 5
    assert fall_back_utc in [start for start, _ in hours]


def test_an_hourly_counter_starts_from_zero_in_the_second_occurrence_of_a_repeated_hour() -> None:
    tz = "America/New_York"
    clock = ManualClock(local(tz, 2024, 11, 3, 1, 30, fold=0))
    hour = CalendarWindow(Period.HOUR, tz, clock)
    hour.add(40)
    clock.set(local(tz, 2024, 11, 3, 1, 10, fold=1))  # the clock reads an earlier time, 40 min later
    assert hour.used() == 0
    hour.add(2)
    assert hour.used() == 2
    assert hour.resets_at() == local(tz, 2024, 11, 3, 2, 0)
    assert not hour.add(5, at=local(tz, 2024, 11, 3, 1, 59, fold=0))  # stamped in the first 01:xx


def test_the_hour_after_a_spring_forward_gap_is_sixty_minutes() -> None:
    tz = "America/New_York"
    hours = hours_of(Period.HOUR, tz, local(tz, 2024, 3, 10, 1, 0), 2)
    assert hours == [
        (dt.datetime(2024, 3, 10, 6, 0, tzinfo=UTC), dt.datetime(2024, 3, 10, 7, 0, tzinfo=UTC)),  # 01:00 EST
        (dt.datetime(2024, 3, 10, 7, 0, tzinfo=UTC), dt.datetime(2024, 3, 10, 8, 0, tzinfo=UTC)),  # 03:00 EDT
    ]


@pytest.mark.parametrize(
    ("tz", "minutes_past_utc_hour"), [("Asia/Kolkata", 30), ("Asia/Kathmandu", 15), ("Australia/Eucla", 15)]
)
def test_hours_and_days_in_fractional_offset_zones_follow_the_local_clock(
    tz: str, minutes_past_utc_hour: int
) -> None:
    at = local(tz, 2024, 6, 15, 13, 59, 59)
    start, end = period_bounds(Period.HOUR, tz, at)
    assert (start, end) == (local(tz, 2024, 6, 15, 13, 0), local(tz, 2024, 6, 15, 14, 0))
    assert start.minute == minutes_past_utc_hour
    assert period_bounds(Period.MINUTE, tz, at) == (at.replace(second=0), at + SECOND)
    day = period_bounds(Period.DAY, tz, at)
    assert day == (local(tz, 2024, 6, 15, 0, 0), local(tz, 2024, 6, 16, 0, 0))


def test_a_kolkata_day_resets_at_1830_utc() -> None:
    tz = "Asia/Kolkata"
    clock = ManualClock(dt.datetime(2024, 6, 15, 18, 29, 59, tzinfo=UTC))
    day = CalendarWindow(Period.DAY, tz, clock)
    day.add(9)
    clock.advance(1)
    assert day.used() == 0
    assert day.period_start() == dt.datetime(2024, 6, 15, 18, 30, tzinfo=UTC)


def test_lord_howe_half_hour_dst_shift_makes_one_30_minute_hour_each_way() -> None:
    tz = "Australia/Lord_Howe"
    # Fall back: 02:00 +11 -> 01:30 +10:30 at 15:00 UTC. Local 01:30-02:00 comes twice.
    back = hours_of(Period.HOUR, tz, dt.datetime(2024, 4, 6, 14, 0, tzinfo=UTC), 3)
    assert [end - start for start, end in back] == [HOUR, HOUR / 2, HOUR]
    assert [wall(start, tz)[0].time() for start, _ in back] == [dt.time(1, 0), dt.time(1, 30), dt.time(2, 0)]
    # Spring forward: 02:00 +10:30 -> 02:30 +11 at 15:30 UTC. Local 02:00-02:30 never happens.
    forward = hours_of(Period.HOUR, tz, dt.datetime(2024, 10, 5, 14, 30, tzinfo=UTC), 3)
    assert [end - start for start, end in forward] == [HOUR, HOUR / 2, HOUR]
    assert [wall(start, tz)[0].time() for start, _ in forward] == [dt.time(1, 0), dt.time(2, 30), dt.time(3, 0)]
    # Its days are 23.5 and 24.5 hours long.
    assert period_bounds(Period.DAY, tz, back[0][0])[1] - period_bounds(Period.DAY, tz, back[0][0])[0] == (
        dt.timedelta(hours=24, minutes=30)
    )
    oct_day = period_bounds(Period.DAY, tz, forward[0][0])
    assert oct_day[1] - oct_day[0] == dt.timedelta(hours=23, minutes=30)


def test_a_minute_window_resets_on_the_local_minute() -> None:
    clock = ManualClock(dt.datetime(2024, 6, 15, 12, 0, 59, 999_999, tzinfo=UTC))
    minute = CalendarWindow(Period.MINUTE, "Europe/Berlin", clock)
    minute.add(3)
    assert minute.resets_at() == dt.datetime(2024, 6, 15, 12, 1, tzinfo=UTC)
    clock.advance(dt.timedelta(microseconds=1))
    assert minute.used() == 0


# ----- rolling windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "granularity"), [(1, 1), (60, 1), (120, 1), (121, 2), (900, 8), (3600, 30), (7 * 86400, 5040)]
)
def test_rolling_granularity_is_one_second_or_a_120th_of_the_window_rounded_up(
    seconds: int, granularity: int
) -> None:
    assert rolling_granularity(seconds) == granularity


def test_a_rolling_minute_counts_usage_for_at_least_60_and_under_61_seconds() -> None:
    t0 = dt.datetime(2024, 6, 15, 12, 0, 0, 500_000, tzinfo=UTC)  # half-way through a 1-second bucket
    window = RollingWindow(60, ManualClock(t0))
    window.add(10)
    assert window.used(t0 + dt.timedelta(seconds=60)) == 10  # counted for the full D seconds...
    assert window.used(t0 + dt.timedelta(seconds=60.5) - MICRO) == 10
    assert window.used(t0 + dt.timedelta(seconds=60.5)) == 0  # ...gone when its bucket's end + D passes
    assert window.resets_at(t0) == dt.datetime(2024, 6, 15, 12, 1, 1, tzinfo=UTC)


def test_a_rolling_window_expires_bucket_by_bucket_and_says_when() -> None:
    clock = ManualClock(dt.datetime(2024, 6, 15, 12, 0, tzinfo=UTC))
    window = RollingWindow(900, clock)  # 15 minutes, 8-second buckets
    assert window.granularity == 8
    window.add(100)
    clock.advance(dt.timedelta(minutes=5))
    window.add(Decimal("50.5"))
    assert window.used() == Decimal("150.5")
    first_expiry = dt.datetime(2024, 6, 15, 12, 15, 8, tzinfo=UTC)  # bucket [12:00:00, 12:00:08) + 15 min
    assert window.resets_at() == first_expiry
    clock.set(first_expiry - MICRO)
    assert window.used() == Decimal("150.5")
    clock.set(first_expiry)
    assert window.used() == Decimal("50.5")
    assert window.resets_at() == dt.datetime(2024, 6, 15, 12, 20, 4, tzinfo=UTC)  # bucket [12:04:56, 12:05:04)
    clock.advance(dt.timedelta(minutes=5))
    assert window.used() == 0
    assert window.resets_at() is None


def test_a_rolling_window_drops_late_usage_whose_bucket_already_expired() -> None:
    clock = ManualClock(dt.datetime(2024, 6, 15, 12, 0, tzinfo=UTC))
    window = RollingWindow(60, clock)
    window.add(1)
    assert not window.add(5, at=clock.now() - dt.timedelta(seconds=61))
    assert window.add(5, at=clock.now() - dt.timedelta(seconds=30))  # still within the window
    assert window.used() == 6


def test_rolling_memory_stays_bounded_however_long_it_runs() -> None:
    start = dt.datetime(2024, 6, 15, tzinfo=UTC)
    clock = ManualClock(start)
    window = RollingWindow(3600, clock)  # 30-second buckets
    stamps = []
    for _ in range(5000):
        stamps.append(clock.now())
        window.add(1)
        assert window.bucket_count <= 3600 // 30 + 1
        clock.advance(7)
    now = clock.now()
    # Epoch-aligned 30 s buckets start on :00 and :30; each add counts until its bucket's end + 1 h.
    alive = [t for t in stamps if now < t.replace(second=t.second // 30 * 30) + dt.timedelta(seconds=30 + 3600)]
    assert window.used() == len(alive) > 3600 // 7


def test_rolling_period_start_is_the_start_of_the_oldest_bucket_still_counted() -> None:
    at = dt.datetime(2024, 6, 15, 12, 0, 10, tzinfo=UTC)
    window = RollingWindow(900, ManualClock(at))
    # 11:45:10 lies in the epoch-aligned 8-second bucket [11:45:04, 11:45:12).
    assert window.period_start() == dt.datetime(2024, 6, 15, 11, 45, 4, tzinfo=UTC)


# ----- helpers for enforcement -------------------------------------------------------------------------


def test_window_for_builds_a_calendar_or_a_rolling_counter_from_a_limit() -> None:
    clock = ManualClock(dt.datetime(2024, 6, 15, tzinfo=UTC))
    daily = window_for(Limit(name="daily", period=Period.DAY, tokens=1000), "Australia/Sydney", clock)
    assert isinstance(daily, CalendarWindow)
    assert (daily.period, daily.tz_name) == (Period.DAY, "Australia/Sydney")
    rolling = window_for(Limit.model_validate({"name": "r", "duration": "15m", "costUSD": "2.50"}), "UTC", clock)
    assert isinstance(rolling, RollingWindow)
    assert rolling.seconds == 900
    assert isinstance(rolling, WindowCounter)


def test_limit_amount_reads_tokens_dollars_or_requests_as_decimal() -> None:
    assert limit_amount(Limit(name="a", period=Period.DAY, tokens=1000)) == Decimal(1000)
    assert limit_amount(Limit.model_validate({"name": "b", "period": "Day", "costUSD": "250.05"})) == Decimal(
        "250.05"
    )
    assert limit_amount(Limit(name="c", duration="1h", requests=10)) == Decimal(10)


@pytest.mark.parametrize(
    ("used", "limit", "percent"),
    [
        (0, 100, 0),
        (49, 100, 49),
        (Decimal("0.999999999"), Decimal(1), 99),  # never rounded up into a threshold
        (Decimal("79.99"), Decimal(100), 79),
        (100, 100, 100),
        (250, 100, 100),  # capped
        (1, 3, 33),
        (2, 3, 66),
        (0, 0, 100),  # a zero budget is spent
        (Decimal(-5), 100, 0),
    ],
)
def test_percent_used_is_floored_and_capped(used: Decimal | int, limit: Decimal | int, percent: int) -> None:
    assert percent_used(used, limit) == percent


def test_amounts_are_decimal_or_int_never_float() -> None:
    window = CalendarWindow(Period.DAY, "UTC", ManualClock(dt.datetime(2024, 6, 15, tzinfo=UTC)))
    with pytest.raises(TypeError, match="float"):
        window.add(0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        window.add(Decimal("NaN"))
    with pytest.raises(TypeError):
        percent_used(0.5, 1)  # type: ignore[arg-type]


def test_a_release_gives_back_a_reservation_but_use_never_drops_below_zero() -> None:
    clock = ManualClock(dt.datetime(2024, 6, 15, tzinfo=UTC))
    for window in (CalendarWindow(Period.DAY, "UTC", clock), RollingWindow(60, clock)):
        admitted = clock.now()
        window.add(1000, at=admitted)  # reservation
        window.add(-1000 + 420, at=admitted)  # settled at 420
        assert window.used() == 420
        window.add(-10_000, at=admitted)
        assert window.used() == 0


def test_available_at_says_when_a_call_would_fit() -> None:
    clock = ManualClock(local("Australia/Sydney", 2024, 7, 1, 22, 0))
    day = CalendarWindow(Period.DAY, "Australia/Sydney", clock)
    day.add(900)
    assert day.available_at(100, 1000) == clock.now()
    assert day.available_at(101, 1000) == local("Australia/Sydney", 2024, 7, 2, 0, 0)
    assert day.available_at(1001, 1000) is None

    rolling = RollingWindow(60, clock)
    start = clock.now()
    rolling.add(600)
    clock.advance(30)
    rolling.add(300)
    assert rolling.available_at(100, 1000) == clock.now()
    assert rolling.available_at(200, 1000) == start + dt.timedelta(seconds=61)
    assert rolling.available_at(800, 1000) == start + dt.timedelta(seconds=91)
    assert rolling.available_at(1001, 1000) is None


# ----- properties --------------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(UTC)
)
zones = st.sampled_from(ZONES)
periods = st.sampled_from(list(Period))
# Instants close to a few of the DST transitions named above, where random instants rarely land.
TRANSITIONS = [
    ("Australia/Sydney", dt.datetime(2024, 4, 6, 16, 0, tzinfo=UTC)),
    ("Australia/Sydney", dt.datetime(2024, 10, 5, 16, 0, tzinfo=UTC)),
    ("America/New_York", dt.datetime(2024, 11, 3, 6, 0, tzinfo=UTC)),
    ("Australia/Lord_Howe", dt.datetime(2024, 4, 6, 15, 0, tzinfo=UTC)),
    ("Australia/Lord_Howe", dt.datetime(2024, 10, 5, 15, 30, tzinfo=UTC)),
    ("America/Santiago", dt.datetime(2022, 9, 11, 4, 0, tzinfo=UTC)),
    ("America/Havana", dt.datetime(2024, 11, 3, 5, 0, tzinfo=UTC)),
]
near_transitions = st.tuples(
    st.sampled_from(TRANSITIONS), st.integers(min_value=-3 * 3600 * 10**6, max_value=3 * 3600 * 10**6)
).map(lambda pick: (pick[0][0], pick[0][1] + pick[1] * MICRO))
zoned_instants = st.one_of(st.tuples(zones, instants), near_transitions)

UNIT = {Period.MINUTE: dt.timedelta(minutes=1), Period.HOUR: HOUR}


@settings(max_examples=400, deadline=None)
@given(zoned_instants, periods)
def test_every_instant_lies_in_exactly_one_period_and_periods_tile_time(
    zoned: tuple[str, dt.datetime], period: Period
) -> None:
    tz, at = zoned
    start, end = period_bounds(period, tz, at)
    assert start <= at < end
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC
    assert period_bounds(period, tz, end)[0] == end  # the next one starts where this one ends
    assert period_bounds(period, tz, start - MICRO)[1] == start  # and the previous one ends where it starts
    assert period_bounds(period, tz, end - MICRO) == (start, end)
    if period in UNIT:
        assert end - start <= UNIT[period]  # an hour is never longer than 60 minutes of real time


@settings(max_examples=150, deadline=None)
@given(
    zones,
    periods,
    instants,
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=50 * 3600),  # seconds the clock moves before this step
            st.integers(min_value=0, max_value=3 * 3600),  # how late the amount is stamped
            st.integers(min_value=-50, max_value=1000),  # the amount (negative: a release)
        ),
        max_size=30,
    ),
)
def test_a_calendar_counter_counts_only_its_own_period_and_never_goes_negative(
    tz: str, period: Period, start: dt.datetime, steps: list[tuple[int, int, int]]
) -> None:
    clock = ManualClock(start)
    window = CalendarWindow(period, tz, clock)
    accepted: list[tuple[dt.datetime, int]] = []
    newest: dt.datetime | None = None
    for advance, lag, amount in steps:
        clock.advance(advance)
        stamp = clock.now() - dt.timedelta(seconds=lag)
        # Spec: an amount stamped before the period of the newest stamp so far is over is dropped.
        expect = newest is None or stamp >= period_bounds(period, tz, max(newest, stamp))[0]
        assert window.add(amount, at=stamp) is expect
        if expect:
            accepted.append((stamp, amount))
            newest = stamp if newest is None else max(newest, stamp)
        now = clock.now()
        bounds = period_bounds(period, tz, now)
        model = 0
        for when, value in accepted:
            if bounds[0] <= when < bounds[1]:
                model = max(0, model + value)
        assert window.used() == model >= 0
        assert window.resets_at() == bounds[1]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=4000),
    instants,
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2 * 10**9),  # microseconds the clock moves
            st.integers(min_value=0, max_value=10**9),  # how late the amount is stamped (µs)
            st.integers(min_value=-50, max_value=1000),
        ),
        max_size=40,
    ),
)
def test_a_rolling_counter_forgets_each_amount_between_d_and_d_plus_granularity_seconds(
    seconds: int, start: dt.datetime, steps: list[tuple[int, int, int]]
) -> None:
    clock = ManualClock(start)
    window = RollingWindow(seconds, clock)
    g = dt.timedelta(seconds=window.granularity)
    d = dt.timedelta(seconds=seconds)
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)

    def expiry(when: dt.datetime) -> dt.datetime:
        bucket_start = epoch + (when - epoch) // g * g
        assert when + d < bucket_start + g + d <= when + d + g  # counted ≥ D, < D + g
        return bucket_start + g + d

    accepted: list[tuple[dt.datetime, int]] = []
    newest: dt.datetime | None = None
    for advance, lag, amount in steps:
        clock.advance(dt.timedelta(microseconds=advance))
        stamp = clock.now() - dt.timedelta(microseconds=lag)
        expect = newest is None or expiry(stamp) > newest
        assert window.add(amount, at=stamp) is expect
        if expect:
            accepted.append((stamp, amount))
            newest = stamp if newest is None else max(newest, stamp)
        now = clock.now()
        per_bucket: dict[dt.datetime, int] = {}
        for when, value in accepted:
            key = expiry(when)
            per_bucket[key] = max(0, per_bucket.get(key, 0) + value)
        model = sum(v for key, v in per_bucket.items() if now < key)  # never after its window passed
        assert window.used() == model >= 0
        assert window.bucket_count <= seconds // window.granularity + 2
