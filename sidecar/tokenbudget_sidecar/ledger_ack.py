"""The ledger's acknowledgement cursor on disk (`ack.json`), and the compaction it allows (ledger.py).

Why this order: `write_ack` runs on the caller's thread as a temp file and a rename, no fsync, so an
acknowledgement survives a process kill as soon as it is answered; the sync thread (ledger_commit.py) then
`persist`s it: fsyncs it and the directory, and only after that deletes the segments whose records are all
at or below the cursor. A power cut in between leaves those segments in place: the operator is offered
them again and its own cursor filters them.

The file also stores the last seq handed out, so seqs stay monotonic when compaction leaves no record
behind. A missing or unreadable file counts as "nothing acknowledged".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenbudget_sidecar.durable_io import discard, fsync_dir, fsync_path
from tokenbudget_sidecar.ledger_segments import Segments

log = logging.getLogger("tokenbudget_sidecar.ledger")

ACK_FILE = "ack.json"


def read_ack(directory: Path) -> tuple[int, int]:
    """(acknowledged cursor, last seq) as the file says; an ack that never got renamed was not given."""
    discard(directory / (ACK_FILE + ".tmp"))
    path = directory / ACK_FILE
    try:
        data = json.loads(path.read_bytes())
        return int(data["acked"]), int(data.get("lastSeq", 0))
    except FileNotFoundError:
        return 0, 0
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ledger ack file unreadable; treating nothing as acknowledged",
                    extra={"record": {"path": str(path), "error": repr(exc)}})
        return 0, 0


def write_ack(directory: Path, cursor: int, last_seq: int) -> None:
    """Replace the file (temp + rename) with a plain write: `persist` fsyncs it before compacting."""
    path = directory / ACK_FILE
    tmp = path.with_name(ACK_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps({"acked": cursor, "lastSeq": last_seq}).encode())
    os.replace(tmp, path)


def persist(segments: Segments, cursor: int) -> None:
    """fsync the ack file, then delete segments wholly at or below it (in that order; sync thread only)."""
    try:
        fsync_path(segments.directory / ACK_FILE)
        fsync_dir(segments.directory)
    except OSError:
        log.exception("ledger ack fsync failed; keeping every segment")
        return
    segments.compact(cursor)


__all__ = ["ACK_FILE", "persist", "read_ack", "write_ack"]
