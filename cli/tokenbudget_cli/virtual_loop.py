"""An asyncio event loop on simulated time, so a month of trace replays in seconds.

The sidecar's admission code awaits real asyncio primitives: a Throttle step sleeps, the concurrency gate
waits with a timeout. Replaying a trace through that code unchanged needs those waits to pass in
simulated time: this loop's `time()` is a virtual clock, and whenever it would block waiting for the
next timer its selector jumps the virtual clock there instead. The ManualClock the admission code reads
(`tokenbudget_api.windows`) is kept at `start + loop.time()`, so both clocks always agree.

Nothing here does real I/O; a replay that waited on a socket would spin.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import selectors
from collections.abc import Callable

from tokenbudget_api.windows import ManualClock


class _FastForwardSelector(selectors.DefaultSelector):
    """Never sleeps: a wait for `timeout` seconds moves the virtual clock forward by that much."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self._advance(timeout)
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """loop.time() is seconds of simulated time since `clock`'s start."""

    def __init__(self, clock: ManualClock) -> None:
        self._virtual = 0.0
        self._start = clock.now()
        self._manual = clock
        super().__init__(selector=_FastForwardSelector(self._advance))

    def time(self) -> float:
        return self._virtual

    def _advance(self, seconds: float) -> None:
        self._virtual += seconds
        self._manual.set(self._start + dt.timedelta(seconds=self._virtual))

    def at(self, instant: dt.datetime) -> float:
        """The loop time of a wall-clock instant."""
        return (instant - self._start).total_seconds()
