"""The ledger's segment files (ledger.py): their names, the list of them, and appends to the active one.

Why its own module: this is the only code that opens, appends to, cuts back and deletes segment files, so
what "a whole line or nothing" means lives in one place; when to roll, fsync or compact is decided by the
ledger and its sync thread (ledger_commit.py), which call in here.

Segment i holds the records with seqs base_i .. base_{i+1} - 1 (its name is its base); the last segment
is the active one, the only one appended to and never deleted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
from pathlib import Path

from tokenbudget_sidecar.durable_io import fsync_path, write_all

log = logging.getLogger("tokenbudget_sidecar.ledger")

SEGMENT_RE = re.compile(r"^usage-(\d{20})\.jsonl$")


def segment_name(base: int) -> str:
    return f"usage-{base:020d}.jsonl"


class Segments:
    """One directory's segments, oldest first, and the active segment's descriptor.

    Thread model: the list, the rolled descriptors waiting for their last fsync and `new_files` change under
    `cond`, the ledger's one condition, which its sync thread holds while it takes them (`take_sync_work`).
    The active segment's size, record count and `broken` flag belong to the owner's thread alone.
    """

    def __init__(self, directory: Path, cond: threading.Condition) -> None:
        self.directory = directory
        self._cond = cond
        self.paths: list[tuple[int, Path]] = []  # (base seq, path), oldest first; the last is active
        self.active_fd = -1
        self.active_size = 0
        self.active_records = 0  # record lines (not intents) in the active segment
        self.broken = False  # a failed write left the file in doubt: roll before the next one
        self.pending_fds: list[int] = []  # rolled segments: fsync, then close (sync thread only)
        self.new_files = False  # a segment was created: fsync the directory

    def adopt(self, found: list[tuple[int, Path]]) -> None:
        """Take the segments replay found (ledger_replay.py) and fsync them: the previous process may have
        died with them only in the page cache, and what they hold is about to be shown to the operator."""
        self.paths.extend(found)
        for _, path in found:
            fsync_path(path)

    def open_active(self, base: int) -> None:
        """Continue in the newest segment if it starts at `base` (so it holds no record: at most intents,
        which the records appended next close), else start a new one."""
        if self.paths:
            last_base, last_path = self.paths[-1]
            if last_base == base:
                self.active_fd = os.open(last_path, os.O_WRONLY | os.O_APPEND)
                self.active_size, self.active_records = last_path.stat().st_size, 0
                return
        self.create(base)

    def create(self, base: int) -> None:
        """Start the segment `base` and make it the active one; the previous one waits for its last fsync."""
        path = self.directory / segment_name(base)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(fd).st_size:  # a leftover with this name (only after odd damage): never append into it
            os.close(fd)
            raise FileExistsError(f"ledger segment {path} already holds data")
        with self._cond:
            if self.active_fd >= 0:
                self.pending_fds.append(self.active_fd)
            self.active_fd, self.active_size, self.broken = fd, 0, False
            self.active_records = 0
            if not self.paths or self.paths[-1][0] != base:
                self.paths.append((base, path))
            self.new_files = True
            self._cond.notify()

    def full(self, line: bytes, segment_bytes: int) -> bool:
        """Whether `line` must go to a new segment: the active one is in doubt, or would pass its size."""
        return self.broken or (bool(self.active_records) and self.active_size + len(line) > segment_bytes)

    def append(self, data: bytes) -> None:
        """Write whole lines to the active segment; on failure cut it back so no half line stays."""
        fd, start = self.active_fd, self.active_size
        try:
            write_all(fd, data)
        except OSError:
            try:
                os.ftruncate(fd, start)  # never leave half a line in front of the next record
            except OSError:
                self.broken = True
            raise
        self.active_size = start + len(data)

    def take_sync_work(self) -> tuple[list[int], list[int], bool]:
        """(rolled descriptors to close after their fsync, every descriptor to fsync, whether the directory
        needs one); the caller holds `cond`."""
        closing, self.pending_fds = self.pending_fds, []
        dirsync, self.new_files = self.new_files, False
        return closing, [*closing, self.active_fd], dirsync

    def compact(self, cursor: int) -> None:
        """Delete the segments whose records are all at or below the acknowledgement `cursor`."""
        with self._cond:
            segments = self.paths
            doomed = [path for (_, path), (next_base, _) in itertools.pairwise(segments)
                      if next_base - 1 <= cursor]
            self.paths = segments[len(doomed):]
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if doomed:
            log.debug("ledger compacted", extra={"record": {"deleted": len(doomed), "acked": cursor}})

    def disk_bytes(self) -> int:
        """Bytes held by the segments (for the metric; a stat per segment, at scrape time only)."""
        with self._cond:
            paths = [p for _, p in self.paths]
        total = 0
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def count(self) -> int:
        with self._cond:
            return len(self.paths)

    def close(self) -> None:
        """Close every descriptor (after the sync thread stopped)."""
        for fd in [*self.pending_fds, self.active_fd]:
            if fd >= 0:
                os.close(fd)
        self.pending_fds, self.active_fd = [], -1


__all__ = ["SEGMENT_RE", "Segments", "segment_name"]
