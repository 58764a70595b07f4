"""The durable ledger: a segmented write-ahead log of settled usage records, one JSON line each.

Why: a usage record is money the operator has not yet counted. If the sidecar forgets it on a restart,
the budget looks less spent than it is; if it hands out the same sequence number twice, the operator's
cursor skips a real record. So every record goes to disk before the operator can see it, and sequence
numbers continue across restarts.

Layout of the directory (an ``emptyDir`` in pods)::

    LOCK                              flock'ed by the one process writing here
    ack.json                          {"acked": N, "lastSeq": M}, replaced atomically (temp + rename)
    checkpoint.json                   what acknowledged records counted in the windows (checkpoint.py),
                                      written before ack.json moves past them
    usage-00000000000000000001.jsonl  a segment; the name is the seq of its first record
    usage-00000000000000002114.jsonl  the active segment (the newest); records are only appended to it

This module is what the usage log holds; each job has its own module:

- ledger_segments.py: the segment files. ``write()`` serializes the record and ``os.write``s the whole line
  (with its newline) to the active segment at once, on the caller's thread: a page-cache copy of about a
  microsecond, no fsync. From that moment the record survives a SIGKILL, an OOM kill or a crash of the
  process: the kernel owns the bytes.
- ledger_commit.py: the group commit, a background thread that fsyncs, so fsync never runs on the event loop;
  ``durable_seq`` is what the operator may see.
- ledger_ack.py: the acknowledgement cursor on disk and the compaction that follows it. The active segment is
  rolled when it reaches ``segment_bytes``, and also when an acknowledgement covers everything written, so an
  idle sidecar whose operator keeps up holds no acknowledged record on disk. Disk use is thus the
  unacknowledged records plus at most one segment.
- ledger_replay.py: reading it all back at start, tolerating what a crash leaves (a torn last line, a line that
  does not parse or repeats a seq, an unreadable ack file). Everything found is fsynced before it is reported
  (the previous process may have died with it only in the page cache).

Intents (intents.py): before a call is forwarded, `write_intent()` appends the record it would get if it
never settled; its own record closes it. The open intents are kept in memory and written again at the head
of every new segment, so compaction (which deletes whole old segments) never takes an intent whose call is
still running: every copy of an intent lies in a segment at or before its closing record's. Replay reports
the intents nothing closed (`Replayed.interrupted`). Intents carry no seq and never roll a segment.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar import intents, ledger_ack
from tokenbudget_sidecar.durable_io import fsync_dir
from tokenbudget_sidecar.ledger_commit import GroupCommit
from tokenbudget_sidecar.ledger_replay import replay
from tokenbudget_sidecar.ledger_segments import SEGMENT_RE, Segments, segment_name

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"


class LedgerLocked(RuntimeError):
    """Another live process holds the ledger directory: two writers would interleave and reuse seqs."""


@dataclass(frozen=True)
class Replayed:
    """What a ledger directory held at start."""

    records: list[UsageRecord]  # unacknowledged, in seq order
    acked: int  # the acknowledgement cursor
    last_seq: int  # the highest seq ever handed out, as far as the disk knows; the next one is last_seq + 1
    torn: int  # torn last lines discarded
    skipped: int  # corrupt or duplicate lines skipped
    interrupted: list[UsageRecord] = field(default_factory=list)  # intents no record closed, in write order


class Ledger:
    """One directory's write-ahead log. `open()` once, `write()` from one thread, `close()` at the end.

    Thread model: `write`, `ack` and `open` run on the owner's thread (the event loop); fsyncs, ack
    persistence and segment deletion run on a private daemon thread (ledger_commit.py). They share a few
    counters and the segment list under one condition variable, never held during I/O by the sync thread.
    """

    def __init__(self, directory: Path, *, sync_interval_s: float = 0.05, segment_bytes: int = 1 << 20,
                 on_durable: Callable[[], None] | None = None) -> None:
        self.directory = Path(directory)
        self.sync_interval_s = sync_interval_s
        self.segment_bytes = segment_bytes
        self.on_durable = on_durable  # called on the sync thread after durable_seq advances
        self.write_errors = 0
        cond = threading.Condition()
        self._segments = Segments(self.directory, cond)
        self._commit = GroupCommit(self._segments, cond, sync_interval_s,
                                   on_synced=self._synced, on_error=self._sync_failed)
        self._open: dict[str, bytes] = {}  # request_id -> intent line of a call not yet settled
        self._lock_fd = -1

    # -- start ------------------------------------------------------------------------------------------

    def open(self) -> Replayed:
        """Lock the directory, replay it, make what it holds durable and start the sync thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LedgerLocked(f"{self.directory} is in use by another process") from None
        acked, ack_last = ledger_ack.read_ack(self.directory)
        found = replay(self.directory, acked)
        bases = [base for base, _ in found.segments]
        last_seq = max(acked, ack_last, found.last, max(bases, default=1) - 1)
        # Everything replayed is about to be shown to the operator: it must be on disk first.
        self._segments.adopt(found.segments)
        self._segments.open_active(last_seq + 1)
        fsync_dir(self.directory)
        self._segments.new_files = False
        self._commit.start(f"ledger-sync:{self.directory.name}", last_seq, acked)
        if found.torn or found.skipped:
            log.warning("ledger replayed with damage", extra={"record": {
                "dir": str(self.directory), "torn": found.torn, "skipped": found.skipped}})
        log.info("ledger replayed", extra={"record": {
            "dir": str(self.directory), "unacked": len(found.records), "acked": acked, "lastSeq": last_seq,
            "segments": self._segments.count(), "interrupted": len(found.interrupted)}})
        return Replayed(found.records, acked, last_seq, found.torn, found.skipped, found.interrupted)

    # -- the hot path -----------------------------------------------------------------------------------

    def write(self, record: UsageRecord, line: bytes | None = None) -> None:
        """Append one record (its seq already set) to the active segment; raises OSError on a failed write.

        Runs on the event loop: one serialization (none when the caller passes the record's JSON `line`,
        newline-terminated) plus one `os.write` of the whole line, no fsync.
        """
        if line is None:
            line = record.model_dump_json().encode() + b"\n"
        try:
            if self._segments.full(line, self.segment_bytes):
                self._roll(record.seq)
            self._segments.append(line)
        except OSError:
            self.write_errors += 1
            self._commit.wrote(record.seq, failed=True)  # it stays visible from memory; durable order is kept
            raise
        self._segments.active_records += 1
        self._open.pop(record.request_id, None)  # the record closes its intent (same line order on disk)
        self._commit.wrote(record.seq)

    def _roll(self, base: int) -> None:
        """Start a new active segment, carrying the open intents into it."""
        self._segments.create(base)
        if self._open:  # calls still running: their intents must outlive the segments compaction deletes
            try:
                self._segments.append(b"".join(self._open.values()))
            except OSError:
                self.write_errors += 1
                self._segments.broken = True  # the next record rolls again, and carries them again
                log.exception("ledger could not carry open intents into a new segment")

    def write_intent(self, intent: UsageRecord) -> None:
        """Append the intent of a call about to be forwarded (intents.py); raises OSError on a failed write.

        Same group commit as the records (no fsync here). Kept in memory until the call's record closes it.
        """
        line = intents.encode_intent(intent)
        self._open[intent.request_id] = line  # carried into the next segment even if this write fails
        # After a failed write that could not be cut back, a newline first ends the half line (skipped at
        # replay) instead of gluing this intent to it.
        self._segments.append(b"\n" + line if self._segments.broken else line)
        self._commit.lines_written()

    def close_intent(self, request_id: str) -> None:
        """Close the intent of a call that ends without a record (no-op when its record closed it)."""
        if self._open.pop(request_id, None) is not None:
            self._segments.append(intents.encode_close(request_id))
            self._commit.lines_written()

    @property
    def open_intents(self) -> int:
        return len(self._open)

    @property
    def durable_seq(self) -> int:
        """The last seq fsynced: the operator may see records up to here."""
        return self._commit.durable_seq

    # -- acknowledgement --------------------------------------------------------------------------------

    def ack(self, cursor: int, last_seq: int) -> None:
        """Persist the acknowledgement cursor now (process-kill safe); fsync and compaction follow.

        `cursor` must not exceed the last seq written (the caller clamps it). `last_seq` is stored too,
        so seqs stay monotonic even when compaction leaves no record behind. What the acknowledged records
        counted in the windows is stored before this, in the checkpoint (checkpoint.py).
        """
        ledger_ack.write_ack(self.directory, cursor, last_seq)
        written = self._commit.written_seq
        if cursor >= written and self._segments.active_records:
            self._roll(written + 1)  # everything is acknowledged: free the active segment
        self._commit.ack_requested(cursor)

    # -- the sync thread's reports ----------------------------------------------------------------------

    def _synced(self) -> None:
        if self.on_durable is not None:
            self.on_durable()

    def _sync_failed(self) -> None:
        self.write_errors += 1

    @property
    def fsync_count(self) -> int:
        return self._commit.fsync_count

    # -- waiting, sizes, shutdown -----------------------------------------------------------------------

    def sync(self, timeout: float | None = None) -> bool:
        """Block until everything written and acknowledged so far is durable (skipping the group-commit wait).

        For shutdown, tests, and `await asyncio.to_thread(ledger.sync)` before answering a pull.
        Returns False on timeout or when the ledger is closed.
        """
        return self._commit.sync(timeout)

    async def sync_async(self) -> None:
        """`sync()` without blocking the event loop."""
        await self._commit.sync_async()

    def disk_bytes(self) -> int:
        """Bytes held by the segments (for the metric; a stat per segment, at scrape time only)."""
        return self._segments.disk_bytes()

    def segment_count(self) -> int:
        return self._segments.count()

    def close(self, *, sync: bool = True) -> None:
        """Stop the thread, make everything durable (unless `sync=False`), close files and unlock.

        `sync=False` models a process kill for tests: the page cache keeps what was written, no fsync.
        """
        if not self._commit.stop(sync=sync):
            return
        self._segments.close()
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1


__all__ = ["SEGMENT_RE", "Ledger", "LedgerLocked", "Replayed", "segment_name"]
