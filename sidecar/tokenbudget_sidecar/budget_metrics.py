"""Per-budget gauges read at scrape time: the same percent and stage the ladder and the headers use.

A collector rather than gauges set on every call, so the figures are computed from the windows as they are
when Prometheus asks (a percent also moves when a lease round brings the fleet's figure, with no call).
Whole windows only: per-User/per-Model windows would make one series per key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tokenbudget_api.tokenbudget import Stage
from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.ladder import STAGE_ORDER


class BudgetCollector(Collector):
    def __init__(self, admission: Callable[[], Admission]) -> None:
        self.admission = admission  # the current one: a policy push replaces it

    def collect(self) -> Iterator[GaugeMetricFamily]:
        percent = GaugeMetricFamily(
            "tokenbudget_budget_used_percent",
            "The budget's use of a window in whole percent, fleet-wide when leased (what the ladder reads).",
            labels=["budget", "window"])
        stage = GaugeMetricFamily("tokenbudget_budget_stage", "Ladder stage of the budget: 0 Normal, 1 Alert, "
                                  "2 Throttle, 3 Downgrade, 4 Block.", labels=["budget"])
        adm = self.admission()
        now = adm.clock.now()
        for b in adm.budgets:
            for w in list(b.windows.values()):
                if w.key is None:
                    percent.add_metric([b.name, w.limit.name], w.percent(now))
            current: Stage = b.stage()
            stage.add_metric([b.name], STAGE_ORDER.index(current))
        yield percent
        yield stage
