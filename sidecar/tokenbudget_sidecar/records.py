"""The usage records a sidecar has not yet handed to the operator, with a monotonic cursor.

The operator pulls `after=<cursor>` and acknowledges by cursor, so a retried pull never double counts
and nothing is dropped before it is acknowledged.
"""

from __future__ import annotations

import asyncio
from collections import deque

from tokenbudget_sidecar.usage import UsageRecord


class UsageLog:
    def __init__(self) -> None:
        self._records: deque[UsageRecord] = deque()
        self.last_seq = 0
        self.acked = 0
        self.changed = asyncio.Event()

    def append(self, record: UsageRecord) -> UsageRecord:
        self.last_seq += 1
        record.seq = self.last_seq
        self._records.append(record)
        self.changed.set()
        return record

    def after(self, cursor: int, limit: int = 1000) -> list[UsageRecord]:
        return [r for r in self._records if r.seq > cursor][:limit]

    def ack(self, cursor: int) -> int:
        """Drop records up to `cursor`; returns how many remain."""
        cursor = min(cursor, self.last_seq)
        while self._records and self._records[0].seq <= cursor:
            self._records.popleft()
        self.acked = max(self.acked, cursor)
        return len(self._records)

    def all(self) -> list[UsageRecord]:
        return list(self._records)
