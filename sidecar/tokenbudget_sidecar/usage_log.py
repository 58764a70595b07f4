"""The usage records a sidecar has not yet handed to the operator, with a monotonic cursor.

The operator pulls `after=<cursor>` and acknowledges by cursor, so a retried pull never double counts
and nothing is dropped before it is acknowledged.

Without a ledger directory the log lives in memory only (tests, the demo, a plain metering proxy).
With one (`TOKENBUDGET_LEDGER_DIR`, an emptyDir in pods) every record is written to the durable
ledger (see ledger.py) when it is appended, and `after()` shows only records already fsynced, so a
sequence number the operator has seen is never handed out again after a crash. Records become
visible within the ledger's group-commit interval (50 ms); `await flush()` makes them visible at once.

Calls in flight when the previous process died left intents no record closed (intents.py): they are
appended here at start, before anything else, as `interrupted` records (`recovered`), so from then on they
are counted, checkpointed and offered like any other record, and never reported twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge

from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar.ledger import Ledger
from tokenbudget_sidecar.settings import Settings

log = logging.getLogger(__name__)

BACKLOG_WARNING = 50_000  # unacknowledged records (~25 MB on disk and in memory): the operator is behind


class UsageLog:
    """Unacknowledged usage records in seq order, optionally backed by a durable `Ledger`.

    Everything here runs on the event loop; the ledger's fsyncs run on its own thread.
    """

    def __init__(self, ledger: Ledger | None = None, *, backlog_warning: int = BACKLOG_WARNING) -> None:
        self._records: deque[UsageRecord] = deque()
        self.last_seq = 0
        self.acked = 0
        self.changed = asyncio.Event()
        self.ledger = ledger
        self.backlog_warning = backlog_warning
        self._backlog_warned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recovered: list[UsageRecord] = []  # interrupted calls of the previous process, appended at start
        if ledger is not None:
            replayed = ledger.open()
            self._records.extend(replayed.records)
            self.last_seq, self.acked = replayed.last_seq, replayed.acked
            ledger.on_durable = self._wake
            self.recovered = [self.append(intent) for intent in replayed.interrupted]
            if self.recovered:
                log.warning("calls in flight when the sidecar last stopped are recorded from their intents, "
                            "estimated (prompt estimate plus output cap) and flagged interrupted",
                            extra={"record": {"calls": len(self.recovered),
                                              "request_ids": [r.request_id for r in self.recovered[:20]]}})
            self._check_backlog()

    @classmethod
    def from_settings(cls, settings: Settings) -> UsageLog:
        """Durable when `settings.ledger_dir` is set, in memory otherwise."""
        return cls(Ledger(settings.ledger_dir) if settings.ledger_dir is not None else None)

    def append(self, record: UsageRecord) -> UsageRecord:
        """Give the record the next seq and keep it; with a ledger, it is on its way to disk on return."""
        self.append_line(record)
        return record

    def append_line(self, record: UsageRecord) -> bytes:
        """`append()`, returning the record's JSON line as the ledger wrote it (the call log reuses it: one
        serialization per call, not two).

        Never raises for a failed disk write (this runs at settlement, after the app got its answer):
        the record stays in memory, is still reported, and the failure is logged and counted.
        """
        record.seq = self.last_seq + 1
        line = record.model_dump_json().encode() + b"\n"
        if self.ledger is not None:
            if self._loop is None:
                with contextlib.suppress(RuntimeError):
                    self._loop = asyncio.get_running_loop()
            try:
                self.ledger.write(record, line)
            except OSError:
                log.exception("ledger write failed; the record is kept in memory only",
                              extra={"record": {"seq": record.seq, "request_id": record.request_id}})
        self.last_seq = record.seq
        self._records.append(record)
        self.changed.set()
        self._check_backlog()
        return line

    @property
    def durable(self) -> bool:
        """Backed by a ledger: intents are worth writing (without one, a crash loses everything anyway)."""
        return self.ledger is not None

    def intend(self, intent: UsageRecord) -> None:
        """Write the intent of a call about to be forwarded (intents.py); a failed write is logged, not raised:
        the call goes on, and only its crash-safety is lost."""
        if self.ledger is None:
            return
        try:
            self.ledger.write_intent(intent)
        except OSError:
            self.ledger.write_errors += 1
            log.exception("ledger intent write failed; a crash during this call would lose its record",
                          extra={"record": {"request_id": intent.request_id}})

    def abandon(self, request_id: str) -> None:
        """A call that ends without a record (a bug path) closes its intent, so no restart invents one."""
        if self.ledger is None:
            return
        try:
            self.ledger.close_intent(request_id)
        except OSError:
            self.ledger.write_errors += 1
            log.exception("ledger intent close failed", extra={"record": {"request_id": request_id}})

    @property
    def visible_seq(self) -> int:
        """The last seq the operator may see: fsynced with a ledger, the last appended without."""
        return self.ledger.durable_seq if self.ledger is not None else self.last_seq

    def after(self, cursor: int, limit: int = 1000) -> list[UsageRecord]:
        """Up to `limit` records with seq > cursor, oldest first, that are durable (see `visible_seq`)."""
        visible = self.visible_seq
        out: list[UsageRecord] = []
        for record in self._records:  # the deque is short (unacknowledged only) and ordered by seq
            if record.seq > visible or len(out) >= limit:
                break
            if record.seq > cursor:
                out.append(record)
        return out

    def upto(self, cursor: int) -> Iterator[UsageRecord]:
        """The unacknowledged records with seq ≤ `cursor`, oldest first (durable or not)."""
        for record in self._records:
            if record.seq > cursor:
                return
            yield record

    def ack(self, cursor: int, *, persist: bool = True) -> int:
        """Drop records up to `cursor` (persisted with a ledger); returns how many remain.

        Clamped to `last_seq`, not to `visible_seq`: acknowledging a record not yet durable is the
        operator's call (it says it has it), and the ack file's cursor keeps its seq from being reused.
        `persist=False` drops them from memory only: the ledger keeps them on disk, to be offered again
        after a restart (the caller could not store what they counted, see State.acknowledge).
        """
        cursor = min(cursor, self.last_seq)
        while self._records and self._records[0].seq <= cursor:
            self._records.popleft()
        if cursor > self.acked:
            self.acked = cursor
            if self.ledger is not None and persist:
                try:
                    self.ledger.ack(cursor, self.last_seq)
                except OSError:
                    log.exception("ledger ack write failed; the records are dropped from memory but may "
                                  "be offered again after a restart", extra={"record": {"cursor": cursor}})
        self._check_backlog()
        return len(self._records)

    def all(self) -> list[UsageRecord]:
        """Every unacknowledged record, durable or not (a local view for tests, not for the operator)."""
        return list(self._records)

    @property
    def pending(self) -> int:
        """Unacknowledged records."""
        return len(self._records)

    async def flush(self) -> None:
        """Wait (off the loop) until every appended record is durable, so `after()` returns all of them."""
        if self.ledger is not None:
            await self.ledger.sync_async()

    def close(self) -> None:
        """Make everything durable and release the ledger directory (blocking: call it off the loop)."""
        if self.ledger is not None:
            self.ledger.close()

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Gauges computed at scrape time, so the hot path pays nothing for them."""
        Gauge("tokenbudget_usage_unacked_records", "Usage records not yet acknowledged by the operator.",
              registry=registry).set_function(lambda: len(self._records))
        Gauge("tokenbudget_usage_last_seq", "Seq of the last usage record appended.",
              registry=registry).set_function(lambda: self.last_seq)
        Gauge("tokenbudget_usage_acked_seq", "The operator's acknowledgement cursor.",
              registry=registry).set_function(lambda: self.acked)
        ledger = self.ledger
        if ledger is not None:
            Gauge("tokenbudget_ledger_bytes", "Bytes in the ledger's segment files.",
                  registry=registry).set_function(ledger.disk_bytes)
            Gauge("tokenbudget_ledger_durable_seq", "Seq of the last usage record fsynced.",
                  registry=registry).set_function(lambda: ledger.durable_seq)
            Gauge("tokenbudget_ledger_write_errors", "Failed ledger writes or fsyncs since start.",
                  registry=registry).set_function(lambda: ledger.write_errors)

    def _check_backlog(self) -> None:
        """Warn once when the backlog crosses the threshold; re-arm below half of it (no flapping)."""
        pending = len(self._records)
        if not self._backlog_warned and pending >= self.backlog_warning:
            self._backlog_warned = True
            log.warning("usage backlog is large: is the operator pulling and acknowledging?",
                        extra={"record": {"unacked": pending, "threshold": self.backlog_warning,
                                          "acked": self.acked, "lastSeq": self.last_seq}})
        elif self._backlog_warned and pending < self.backlog_warning // 2:
            self._backlog_warned = False
            log.info("usage backlog back to normal", extra={"record": {"unacked": pending}})

    def _wake(self) -> None:
        """Called on the ledger's sync thread when records became durable: wake pullers on the loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(self.changed.set)
