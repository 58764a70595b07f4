"""The ledger's group commit (ledger.py): one background thread fsyncs what the event loop wrote.

Why a thread and an interval: `write()` only hands a line to the page cache (about a microsecond, and the
record survives a process kill from then on); an fsync costs milliseconds and must never run on the event
loop. So a daemon thread fsyncs the active segment (and the directory when a segment was created) when
there is something new, at most once every `interval_s` (50 ms by default): records settled within one
interval share one fsync.

``durable_seq`` is the last seq known to be on stable storage. The usage log shows the operator only
records up to it, so a seq the operator has seen is on disk and can never be reused, even after a power
loss. A power loss or kernel crash can lose at most the records settled in the last interval plus one
fsync (never shown to the operator; their seqs may be handed out again, which is harmless).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable

from tokenbudget_sidecar import ledger_ack
from tokenbudget_sidecar.durable_io import fsync_dir
from tokenbudget_sidecar.ledger_segments import Segments

log = logging.getLogger("tokenbudget_sidecar.ledger")


class GroupCommit:
    """The sync thread and the counters it shares with the owner's thread, under the ledger's condition.

    The owner reports what it wrote (`wrote`, `lines_written`, `ack_requested`); the thread fsyncs, persists
    the acknowledgement and compacts (ledger_ack.py), then calls `on_synced`. The condition is never held
    during I/O by the thread.
    """

    def __init__(self, segments: Segments, cond: threading.Condition, interval_s: float, *,
                 on_synced: Callable[[], None], on_error: Callable[[], None]) -> None:
        self.segments = segments
        self.interval_s = interval_s
        self.fsync_count = 0
        self._cond = cond
        self._on_synced = on_synced  # called on the sync thread after durable_seq advances
        self._on_error = on_error  # a failed fsync: the ledger counts it with its write errors
        self._new_lines = False  # intent or close lines written since the last fsync
        self.written_seq = 0
        self.durable_seq = 0
        self._ack_to_sync: int | None = None
        self._ack_requested = 0  # the last cursor given to ack()
        self._ack_done = 0  # the last cursor fsynced and compacted
        self._urgent = False
        self._idle = False  # the sync thread waits for work (a write must wake it)
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self, name: str, last_seq: int, acked: int) -> None:
        """Start the thread from what replay found: all of it is durable, `acked` is persisted."""
        self.written_seq = self.durable_seq = last_seq
        self._ack_requested = self._ack_done = acked
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the owner's side -------------------------------------------------------------------------------

    def wrote(self, seq: int, *, failed: bool = False) -> None:
        """Record `seq` as written; a failed write wakes the thread at once (durable order is kept)."""
        with self._cond:
            self.written_seq = seq
            if failed or self._idle:  # wake the sync thread only when it sleeps for lack of work, not per record
                self._cond.notify()

    def lines_written(self) -> None:
        """Intent or close lines were appended: they need an fsync too, though no seq moved."""
        with self._cond:
            self._new_lines = True
            if self._idle:
                self._cond.notify()

    def ack_requested(self, cursor: int) -> None:
        with self._cond:
            self._ack_to_sync = self._ack_requested = cursor
            self._cond.notify()

    def sync(self, timeout: float | None = None) -> bool:
        """Block until everything written and acknowledged so far is durable (skipping the group-commit wait).

        Returns False on timeout or when the thread has stopped.
        """
        with self._cond:
            target, ack = self.written_seq, self._ack_requested

            def done() -> bool:
                return self.durable_seq >= target and self._ack_done >= ack

            if done():
                return True
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: done() or self._stop, timeout=timeout) and done()

    async def sync_async(self) -> None:
        """`sync()` without blocking the event loop."""
        if self.durable_seq < self.written_seq:
            await asyncio.to_thread(self.sync)

    def stop(self, *, sync: bool) -> bool:
        """Stop the thread, then make everything durable unless `sync=False`; False when it was not running."""
        if self._thread is None:
            return False
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._thread = None
        if sync:
            self._sync_once()
        return True

    # -- the thread -------------------------------------------------------------------------------------

    def _has_work(self) -> bool:
        return (self.written_seq > self.durable_seq or bool(self.segments.pending_fds) or self.segments.new_files
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
                delay = last + self.interval_s - time.monotonic()
                if delay > 0 and not self._urgent:  # group commit: let more records join this fsync
                    self._cond.wait_for(lambda: self._stop or self._urgent, timeout=delay)
                    if self._stop:
                        return
            self._sync_once()
            last = time.monotonic()

    def _sync_once(self) -> None:
        with self._cond:
            target = self.written_seq
            closing, fds, dirsync = self.segments.take_sync_work()
            self._new_lines = False
            ack, self._ack_to_sync = self._ack_to_sync, None
            self._urgent = False
        try:
            for fd in fds:
                os.fsync(fd)
            if dirsync:
                fsync_dir(self.segments.directory)
            self.fsync_count += 1
        except OSError:
            # The kernel may have dropped the dirty pages; nothing we can redo. Say so loudly and keep the
            # records visible (they are in memory), rather than hiding them from the operator forever.
            self._on_error()
            log.exception("ledger fsync failed; records since the last sync may not survive a power loss")
        for fd in closing:
            os.close(fd)
        if ack is not None:
            ledger_ack.persist(self.segments, ack)
        with self._cond:
            self.durable_seq = max(self.durable_seq, target)
            if ack is not None:
                self._ack_done = max(self._ack_done, ack)
            self._cond.notify_all()
        self._on_synced()


__all__ = ["GroupCommit"]
