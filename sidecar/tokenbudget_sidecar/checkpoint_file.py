"""`checkpoint.json` in the ledger directory: loading the usage checkpoint at start, writing it on each acknowledgement.

Why its own module: what a restart does when the file is missing, damaged or behind the ledger is a decision
about lost money (`lostBefore`, and with it `failMode`), not about counting (checkpoint.py) or bytes
(checkpoint_format.py).

It writes the file in the order checkpoint.py's "Order on an acknowledgement" requires: temp file, fsync,
rename, fsync of the directory, off the event loop, before the ledger may move its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from pathlib import Path

from tokenbudget_sidecar.checkpoint import Checkpoint
from tokenbudget_sidecar.checkpoint_format import CheckpointError, document
from tokenbudget_sidecar.durable_io import discard, replace_durably

log = logging.getLogger("tokenbudget_sidecar.checkpoint")

FILE = "checkpoint.json"


class CheckpointFile:
    """`checkpoint.json` in the ledger directory (whose LOCK the ledger holds: one writer)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / FILE
        self.writes = 0
        self.write_errors = 0
        self.last_bytes = 0

    def load(self, acked: int, now: dt.datetime) -> Checkpoint:
        """The checkpoint, or an empty one that says what was lost (`lostBefore`, logged as an error).

        `acked`: the ledger's cursor. Records at or below it are gone from the ledger, so a checkpoint
        that does not cover them (missing, unreadable, or behind it) cannot be completed from anything.
        """
        discard(self.path.with_name(FILE + ".tmp"))  # a write that never got renamed
        try:
            cp = Checkpoint.decode(self.path.read_bytes())
        except FileNotFoundError:
            if acked == 0:
                return Checkpoint()
            return self._lost(Checkpoint(acked), now, "missing while the ledger has acknowledged records")
        except (OSError, CheckpointError) as exc:
            kept = self.path.with_name(FILE + ".corrupt")
            with contextlib.suppress(OSError):
                os.replace(self.path, kept)  # kept for a post-mortem; the next acknowledgement writes anew
            return self._lost(Checkpoint(acked), now, f"unreadable ({exc}); kept as {kept.name}")
        if cp.cursor < acked:
            cp.cursor = acked
            return self._lost(cp, now, "older than the ledger's acknowledgement cursor")
        cp.prune(now)
        log.info("usage checkpoint loaded", extra={"record": {
            "path": str(self.path), "cursor": cp.cursor, "acked": acked, "windows": cp.windows,
            "lostBefore": cp.lost_before.isoformat() if cp.lost_before else None}})
        return cp

    def _lost(self, cp: Checkpoint, now: dt.datetime, why: str) -> Checkpoint:
        cp.lost_before = max(cp.lost_before or now, now)
        cp.prune(now)
        log.error(f"usage checkpoint {why}: what acknowledged calls spent in the current windows is unknown. "
                  f"Windows reaching back before {cp.lost_before.isoformat()} count only the unacknowledged calls; "
                  "budgets with failMode Closed refuse calls in them until they reset, Open ones admit "
                  "(deleting the pod starts it on an empty ledger)", extra={"record": {
                      "path": str(self.path), "cursor": cp.cursor, "lostBefore": cp.lost_before.isoformat()}})
        return cp

    async def save(self, checkpoint: Checkpoint) -> bool:
        """Write `checkpoint` durably, off the event loop; False (logged) when the disk refused."""
        head, windows, loose = checkpoint.encode()
        try:
            self.last_bytes = await asyncio.to_thread(self._write, head, windows, loose)
        except OSError:
            self.write_errors += 1
            log.exception("usage checkpoint write failed; the ledger keeps the acknowledged records on disk",
                          extra={"record": {"path": str(self.path), "cursor": checkpoint.cursor}})
            return False
        self.writes += 1
        return True

    def _write(self, head: str, windows: list[tuple[str, tuple[str, ...]]], loose: list[str]) -> int:
        """Join, hash and write the pieces (on a thread); the rename is durable before the ledger may delete
        what the file covers."""
        data = document(head, windows, loose)
        replace_durably(self.path, data)
        return len(data)


__all__ = ["FILE", "CheckpointFile"]
