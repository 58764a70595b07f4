"""Streaming quantiles of thinking tokens: a fixed log-spaced histogram (the DDSketch idea).

Why this structure and not a t-digest or a reservoir:

- Relative error is guaranteed, not hoped for: with relative accuracy a = 0.01 and
  ``g = (1 + a) / (1 - a)``, bucket ``k`` holds the values in ``(g^(k-1), g^k]`` and answers with
  ``2g^k / (g + 1)``, which is within 1% of every value in the bucket. A budget recommendation built
  from P95 is therefore off by at most 1% from the P95 of what was observed; a t-digest's error depends
  on the data and on the order it arrived in.
- Memory is bounded by the value range, not by the number of calls: thinking tokens are integers below
  10 million (clamped), so at most ``ln(10^7) / ln(g) ≈ 810`` buckets exist, ~40 in practice
  (one class's thinking rarely spans more than a factor of 2-3).
- Histograms merge by adding counts, exactly and in any order: the operator can combine the sketches
  of every pod a ThinkTier selects into one per class without losing accuracy (it gets the buckets in
  the admin snapshot). t-digest merges are approximate and order-dependent; a reservoir cannot merge.
- No dependency: the PyPI t-digest packages are thin, rarely released and float-heavy; this is 60 lines.
"""

from __future__ import annotations

import math

MAX_VALUE = 10_000_000
"""Larger values are clamped: no provider lets one call think this long."""


class LogHistogram:
    """Counts of non-negative integers in log-spaced buckets; quantiles within `relative_accuracy`."""

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError("relative_accuracy must be in (0, 1)")
        self.relative_accuracy = relative_accuracy
        self.gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self.gamma)
        self.buckets: dict[int, int] = {}
        self.zeros = 0  # log buckets cannot hold 0; calls that did not think at all are common
        self.count = 0
        self.min: int | None = None
        self.max: int | None = None

    def _key(self, value: int) -> int:
        return math.ceil(math.log(value) / self._log_gamma)

    def _value(self, key: int) -> float:
        return 2 * self.gamma**key / (self.gamma + 1)

    def add(self, value: int, times: int = 1) -> None:
        value = min(max(int(value), 0), MAX_VALUE)
        if value == 0:
            self.zeros += times
        else:
            key = self._key(value)
            self.buckets[key] = self.buckets.get(key, 0) + times
        self.count += times
        self.min = value if self.min is None else min(self.min, value)
        self.max = value if self.max is None else max(self.max, value)

    def quantile(self, q: float) -> int | None:
        """The nearest-rank q-quantile (the value at rank ceil(q·n)), or None when empty."""
        if self.count == 0 or self.min is None or self.max is None:
            return None
        rank = min(max(math.ceil(q * self.count), 1), self.count)
        if rank <= self.zeros:
            return 0
        seen = self.zeros
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                # Clamping to what was seen makes one-value and narrow distributions exact.
                return min(max(round(self._value(key)), self.min), self.max)
        return self.max

    def merge(self, other: LogHistogram) -> None:
        """Add another histogram's counts (same accuracy): exact, commutative, associative."""
        if other.gamma != self.gamma:
            raise ValueError("cannot merge histograms of different accuracy")
        for key, n in other.buckets.items():
            self.buckets[key] = self.buckets.get(key, 0) + n
        self.zeros += other.zeros
        self.count += other.count
        for bound in (other.min, other.max):
            if bound is not None:
                self.min = bound if self.min is None else min(self.min, bound)
                self.max = bound if self.max is None else max(self.max, bound)

    def wire(self) -> dict[str, object]:
        """JSON form for the admin API (bucket keys as strings), so the operator can merge pods."""
        return {"relativeAccuracy": str(self.relative_accuracy), "zeros": self.zeros, "count": self.count,
                "min": self.min, "max": self.max, "buckets": {str(k): n for k, n in sorted(self.buckets.items())}}

    @classmethod
    def from_wire(cls, data: dict[str, object]) -> LogHistogram:
        hist = cls(float(str(data["relativeAccuracy"])))
        buckets = data.get("buckets")
        if isinstance(buckets, dict):
            hist.buckets = {int(k): int(v) for k, v in buckets.items()}
        hist.zeros = int(str(data.get("zeros", 0)))
        hist.count = int(str(data.get("count", 0)))
        hist.min = None if data.get("min") is None else int(str(data["min"]))
        hist.max = None if data.get("max") is None else int(str(data["max"]))
        return hist
