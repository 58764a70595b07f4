"""The graduated ladder: the step a window's use puts it on, climbing at once and coming down late.

A budget that alerts at 50%, throttles at 80% and blocks at 95% would flap between steps on every call
while its use hovers at a threshold (a settlement lowers it, the next hold raises it). So a window climbs
as soon as it reaches a step but comes back down only once its use falls `hysteresisPercent` below it;
each window keeps the step it stands on (Window.step), and a budget's stage is the highest of them.
"""

from __future__ import annotations

import datetime as dt
import itertools

from tokenbudget_api.admin import AlertReport
from tokenbudget_api.tokenbudget import LadderStep, Stage
from tokenbudget_sidecar.windows import Window

STAGE_ORDER = [Stage.NORMAL, Stage.ALERT, Stage.THROTTLE, Stage.DOWNGRADE, Stage.BLOCK]
MAX_ALERTS = 1_000  # alerts kept for the operator's cursor; older ones are dropped (it pulls every round)
_alert_ids = itertools.count(1)


class Ladder:
    """One budget's steps, in ascending order of `at`, and its hysteresis margin (percentage points)."""

    def __init__(self, budget: str, steps: list[LadderStep], hysteresis_percent: int) -> None:
        self.budget = budget
        self.steps = steps
        self.hysteresis_percent = hysteresis_percent

    def next_step(self, step: int, pct: int) -> int:
        """Where the ladder goes from `step` at `pct`: up past each threshold reached, down only past the
        hysteresis margin. Monotone in `pct`, so two bounds that agree pin the exact percent's answer."""
        i = step
        while i + 1 < len(self.steps) and pct >= self.steps[i + 1].at:
            i += 1
        while i >= 0 and pct < self.steps[i].at - self.hysteresis_percent:
            i -= 1
        return i

    def ambiguous(self, window: Window, now: dt.datetime) -> bool:
        """Whether the lazy holds in `window` leave its step in doubt: the percent with every lazy hold at its
        prompt's lower bound and the one with them as held lead to different steps (count them first)."""
        return bool(window.lazy) and (self.next_step(window.step, window.percent_low(now))
                                      != self.next_step(window.step, window.percent(now)))

    def place(self, window: Window, now: dt.datetime) -> list[AlertReport]:
        """Put `window` on the step its percent puts it on; an alert (as the operator pulls it, to become an
        Event) for every step it passed going up."""
        pct = window.percent(now)
        i = self.next_step(window.step, pct)
        alerts = [AlertReport(seq=next(_alert_ids), budget=self.budget, window=window.label,
                              stage=Stage(self.steps[up].action.value), percent=pct, time=now)
                  for up in range(window.step + 1, i + 1)]
        window.step = i
        return alerts


__all__ = ["MAX_ALERTS", "STAGE_ORDER", "Ladder"]
