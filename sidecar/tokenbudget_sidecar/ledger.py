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

Group commit, and what survives what:

- ``write()`` serializes the record and ``os.write``s the whole line (with its newline) to the active
  segment at once, on the caller's thread: a page-cache copy of about a microsecond, no fsync. From
  that moment the record survives a SIGKILL, an OOM kill or a crash of the process: the kernel owns
  the bytes.
- A background thread fsyncs the active segment (and the directory when a segment was created) when
  there is something new, at most once every ``sync_interval_s`` (50 ms by default): records settled
  within one interval share one fsync. fsync never runs on the event loop.
- ``durable_seq`` is the last seq known to be on stable storage. The usage log shows the operator only
  records up to it, so a seq the operator has seen is on disk and can never be reused, even after a
  power loss. A power loss or kernel crash can lose at most the records settled in the last interval
  plus one fsync (never shown to the operator; their seqs may be handed out again, which is harmless).
- At start, everything found on disk is fsynced before it is reported (the previous process may have
  died with it only in the page cache).

Intents (intents.py): before a call is forwarded, `write_intent()` appends the record it would get if it
never settled; its own record closes it. The open intents are kept in memory and written again at the head
of every new segment, so compaction (which deletes whole old segments) never takes an intent whose call is
still running: every copy of an intent lies in a segment at or before its closing record's. Replay reports
the intents nothing closed (`Replayed.interrupted`). Intents carry no seq and never roll a segment.

Acknowledgement and compaction: ``ack()`` writes ``ack.json`` through a temp file and a rename on the
caller's thread (so an acknowledgement survives a process kill as soon as it is answered); the thread
then fsyncs it and the directory, and only after that deletes whole segments whose records are all at
or below the cursor. The active segment is rolled when it reaches ``segment_bytes``, and also when an
acknowledgement covers everything written, so an idle sidecar whose operator keeps up holds no
acknowledged record on disk. Disk use is thus the unacknowledged records plus at most one segment.

Replay tolerates what a crash leaves: a torn last line (no newline: the process died mid-write, the
record was never durable, so never reported) is cut off with a warning; a line that does not parse or
repeats a seq is skipped with a warning; a missing or unreadable ack file counts as "nothing
acknowledged" (the operator's own cursor still filters what it already counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar import intents
from tokenbudget_sidecar.ledger_replay import SEGMENT_RE, replay

log = logging.getLogger(__name__)

ACK_FILE = "ack.json"
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


def segment_name(base: int) -> str:
    return f"usage-{base:020d}.jsonl"


class Ledger:
    """One directory's write-ahead log. `open()` once, `write()` from one thread, `close()` at the end.

    Thread model: `write`, `ack` and `open` run on the owner's thread (the event loop); fsyncs, ack
    persistence and segment deletion run on a private daemon thread. They share a few counters and the
    segment list under one condition variable, never held during I/O by the sync thread.
    """

    def __init__(self, directory: Path, *, sync_interval_s: float = 0.05, segment_bytes: int = 1 << 20,
                 on_durable: Callable[[], None] | None = None) -> None:
        self.directory = Path(directory)
        self.sync_interval_s = sync_interval_s
        self.segment_bytes = segment_bytes
        self.on_durable = on_durable  # called on the sync thread after durable_seq advances
        self.write_errors = 0
        self.fsync_count = 0
        self._cond = threading.Condition()
        self._segments: list[tuple[int, Path]] = []  # (base seq, path), oldest first; the last is active
        self._active_fd = -1
        self._active_size = 0
        self._active_records = 0  # record lines (not intents) in the active segment
        self._open: dict[str, bytes] = {}  # request_id -> intent line of a call not yet settled
        self._active_broken = False  # a failed write left the file in doubt: roll before the next one
        self._pending_fds: list[int] = []  # rolled segments: fsync, then close (sync thread only)
        self._new_files = False  # a segment was created: fsync the directory
        self._new_lines = False  # intent or close lines written since the last fsync
        self._written_seq = 0
        self._durable_seq = 0
        self._ack_to_sync: int | None = None
        self._ack_requested = 0  # the last cursor given to ack()
        self._ack_done = 0  # the last cursor fsynced and compacted
        self._urgent = False
        self._idle = False  # the sync thread waits for work (a write must wake it)
        self._stop = False
        self._lock_fd = -1
        self._thread: threading.Thread | None = None

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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / (ACK_FILE + ".tmp"))  # an ack that never got renamed: not acked
        acked, ack_last = self._read_ack()
        records, last_in_files, torn, skipped, interrupted = self._replay_segments(acked)
        bases = [base for base, _ in self._segments]
        last_seq = max(acked, ack_last, last_in_files, max(bases, default=1) - 1)
        # Everything replayed is about to be shown to the operator: it must be on disk first.
        for _, path in self._segments:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._open_active(last_seq + 1)
        self._fsync_dir()
        self._new_files = False
        self._written_seq = self._durable_seq = last_seq
        self._ack_requested = self._ack_done = acked
        self._thread = threading.Thread(target=self._run, name=f"ledger-sync:{self.directory.name}", daemon=True)
        self._thread.start()
        if torn or skipped:
            log.warning("ledger replayed with damage", extra={"record": {
                "dir": str(self.directory), "torn": torn, "skipped": skipped}})
        log.info("ledger replayed", extra={"record": {
            "dir": str(self.directory), "unacked": len(records), "acked": acked, "lastSeq": last_seq,
            "segments": len(self._segments), "interrupted": len(interrupted)}})
        return Replayed(records, acked, last_seq, torn, skipped, interrupted)

    def _read_ack(self) -> tuple[int, int]:
        path = self.directory / ACK_FILE
        try:
            data = json.loads(path.read_bytes())
            return int(data["acked"]), int(data.get("lastSeq", 0))
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ledger ack file unreadable; treating nothing as acknowledged",
                        extra={"record": {"path": str(path), "error": repr(exc)}})
            return 0, 0

    def _replay_segments(self, acked: int) -> tuple[list[UsageRecord], int, int, int, list[UsageRecord]]:
        found = replay(self.directory, acked)
        self._segments.extend(found.segments)
        return found.records, found.last, found.torn, found.skipped, found.interrupted

    def _open_active(self, base: int) -> None:
        """Continue in the newest segment if it starts at `base` (so it holds no record: at most intents,
        which the records appended next close), else start a new one."""
        if self._segments:
            last_base, last_path = self._segments[-1]
            if last_base == base:
                self._active_fd = os.open(last_path, os.O_WRONLY | os.O_APPEND)
                self._active_size, self._active_records = last_path.stat().st_size, 0
                return
        self._create_segment(base)

    def _create_segment(self, base: int) -> None:
        path = self.directory / segment_name(base)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size:  # a leftover with this name (only after odd damage): never append into it
            os.close(fd)
            raise FileExistsError(f"ledger segment {path} already holds data")
        with self._cond:
            if self._active_fd >= 0:
                self._pending_fds.append(self._active_fd)
            self._active_fd, self._active_size, self._active_broken = fd, 0, False
            self._active_records = 0
            if not self._segments or self._segments[-1][0] != base:
                self._segments.append((base, path))
            self._new_files = True
            self._cond.notify()
        if self._open:  # calls still running: their intents must outlive the segments compaction deletes
            try:
                self._append(b"".join(self._open.values()))
            except OSError:
                self.write_errors += 1
                self._active_broken = True  # the next record rolls again, and carries them again
                log.exception("ledger could not carry open intents into a new segment")

    # -- the hot path -----------------------------------------------------------------------------------

    def write(self, record: UsageRecord, line: bytes | None = None) -> None:
        """Append one record (its seq already set) to the active segment; raises OSError on a failed write.

        Runs on the event loop: one serialization (none when the caller passes the record's JSON `line`,
        newline-terminated) plus one `os.write` of the whole line, no fsync.
        """
        if line is None:
            line = record.model_dump_json().encode() + b"\n"
        try:
            if self._active_broken or (self._active_records and self._active_size + len(line) > self.segment_bytes):
                self._create_segment(record.seq)
            self._append(line)
        except OSError:
            self.write_errors += 1
            with self._cond:
                self._written_seq = record.seq  # it stays visible from memory; durable order is kept
                self._cond.notify()
            raise
        self._active_records += 1
        self._open.pop(record.request_id, None)  # the record closes its intent (same line order on disk)
        with self._cond:
            self._written_seq = record.seq
            if self._idle:  # wake the sync thread only when it sleeps for lack of work, not per record
                self._cond.notify()

    def _append(self, data: bytes) -> None:
        """Write whole lines to the active segment; on failure cut it back so no half line stays."""
        fd, start = self._active_fd, self._active_size
        try:
            view = memoryview(data)
            while view:  # a regular file only writes short on ENOSPC/EFBIG, which then raises next round
                view = view[os.write(fd, view):]
        except OSError:
            try:
                os.ftruncate(fd, start)  # never leave half a line in front of the next record
            except OSError:
                self._active_broken = True
            raise
        self._active_size = start + len(data)

    def write_intent(self, intent: UsageRecord) -> None:
        """Append the intent of a call about to be forwarded (intents.py); raises OSError on a failed write.

        Same group commit as the records (no fsync here). Kept in memory until the call's record closes it.
        """
        line = intents.encode_intent(intent)
        self._open[intent.request_id] = line  # carried into the next segment even if this write fails
        # After a failed write that could not be cut back, a newline first ends the half line (skipped at
        # replay) instead of gluing this intent to it.
        self._append(b"\n" + line if self._active_broken else line)
        self._wake()

    def close_intent(self, request_id: str) -> None:
        """Close the intent of a call that ends without a record (no-op when its record closed it)."""
        if self._open.pop(request_id, None) is not None:
            self._append(intents.encode_close(request_id))
            self._wake()

    @property
    def open_intents(self) -> int:
        return len(self._open)

    def _wake(self) -> None:
        with self._cond:
            self._new_lines = True
            if self._idle:
                self._cond.notify()

    @property
    def durable_seq(self) -> int:
        """The last seq fsynced: the operator may see records up to here."""
        return self._durable_seq

    # -- acknowledgement --------------------------------------------------------------------------------

    def ack(self, cursor: int, last_seq: int) -> None:
        """Persist the acknowledgement cursor now (process-kill safe); fsync and compaction follow.

        `cursor` must not exceed the last seq written (the caller clamps it). `last_seq` is stored too,
        so seqs stay monotonic even when compaction leaves no record behind. What the acknowledged records
        counted in the windows is stored before this, in the checkpoint (checkpoint.py).
        """
        path = self.directory / ACK_FILE
        tmp = path.with_name(ACK_FILE + ".tmp")
        with open(tmp, "wb") as f:  # a plain write: the sync thread fsyncs it before compacting
            f.write(json.dumps({"acked": cursor, "lastSeq": last_seq}).encode())
        os.replace(tmp, path)
        if cursor >= self._written_seq and self._active_records:
            self._create_segment(self._written_seq + 1)  # everything is acknowledged: free the active segment
        with self._cond:
            self._ack_to_sync = self._ack_requested = cursor
            self._cond.notify()

    # -- the sync thread --------------------------------------------------------------------------------

    def _has_work(self) -> bool:
        return (self._written_seq > self._durable_seq or bool(self._pending_fds) or self._new_files
                or self._new_lines or self._ack_to_sync is not None)

    def _run(self) -> None:
        last = 0.0
        while True:
            with self._cond:
                self._idle = True
                self._cond.wait_for(lambda: self._stop or self._has_work())
                self._idle = False
                if self._stop:
                    return
                delay = last + self.sync_interval_s - time.monotonic()
                if delay > 0 and not self._urgent:  # group commit: let more records join this fsync
                    self._cond.wait_for(lambda: self._stop or self._urgent, timeout=delay)
                    if self._stop:
                        return
            self._sync_once()
            last = time.monotonic()

    def _sync_once(self) -> None:
        with self._cond:
            target = self._written_seq
            closing, self._pending_fds = self._pending_fds, []
            fds = [*closing, self._active_fd]
            dirsync, self._new_files = self._new_files, False
            self._new_lines = False
            ack, self._ack_to_sync = self._ack_to_sync, None
            self._urgent = False
        try:
            for fd in fds:
                os.fsync(fd)
            if dirsync:
                self._fsync_dir()
            self.fsync_count += 1
        except OSError:
            # The kernel may have dropped the dirty pages; nothing we can redo. Say so loudly and keep the
            # records visible (they are in memory), rather than hiding them from the operator forever.
            self.write_errors += 1
            log.exception("ledger fsync failed; records since the last sync may not survive a power loss")
        for fd in closing:
            os.close(fd)
        if ack is not None:
            self._persist_ack(ack)
        with self._cond:
            self._durable_seq = max(self._durable_seq, target)
            if ack is not None:
                self._ack_done = max(self._ack_done, ack)
            self._cond.notify_all()
        if self.on_durable is not None:
            self.on_durable()

    def _persist_ack(self, cursor: int) -> None:
        """fsync the ack file, then delete segments wholly at or below it (in that order)."""
        try:
            fd = os.open(self.directory / ACK_FILE, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._fsync_dir()
        except OSError:
            log.exception("ledger ack fsync failed; keeping every segment")
            return
        with self._cond:
            segments = self._segments
            # Segment i holds seqs base_i .. base_{i+1} - 1; the active (last) one is never deleted.
            doomed = [path for (_, path), (next_base, _) in itertools.pairwise(segments)
                      if next_base - 1 <= cursor]
            self._segments = segments[len(doomed):]
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if doomed:
            log.debug("ledger compacted", extra={"record": {"deleted": len(doomed), "acked": cursor}})

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- waiting, sizes, shutdown -----------------------------------------------------------------------

    def sync(self, timeout: float | None = None) -> bool:
        """Block until everything written and acknowledged so far is durable (skipping the group-commit wait).

        For shutdown, tests, and `await asyncio.to_thread(ledger.sync)` before answering a pull.
        Returns False on timeout or when the ledger is closed.
        """
        with self._cond:
            target, ack = self._written_seq, self._ack_requested

            def done() -> bool:
                return self._durable_seq >= target and self._ack_done >= ack

            if done():
                return True
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: done() or self._stop, timeout=timeout) and done()

    async def sync_async(self) -> None:
        """`sync()` without blocking the event loop."""
        if self._durable_seq < self._written_seq:
            await asyncio.to_thread(self.sync)

    def disk_bytes(self) -> int:
        """Bytes held by the segments (for the metric; a stat per segment, at scrape time only)."""
        with self._cond:
            paths = [p for _, p in self._segments]
        total = 0
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def segment_count(self) -> int:
        with self._cond:
            return len(self._segments)

    def close(self, *, sync: bool = True) -> None:
        """Stop the thread, make everything durable (unless `sync=False`), close files and unlock.

        `sync=False` models a process kill for tests: the page cache keeps what was written, no fsync.
        """
        if self._thread is None:
            return
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._thread = None
        if sync:
            self._sync_once()
        for fd in [*self._pending_fds, self._active_fd]:
            if fd >= 0:
                os.close(fd)
        self._pending_fds, self._active_fd = [], -1
        os.close(self._lock_fd)  # releases the flock
        self._lock_fd = -1


__all__ = ["SEGMENT_RE", "Ledger", "LedgerLocked", "Replayed", "segment_name"]
