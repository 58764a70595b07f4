"""Reading a ledger directory back at start (ledger.py): the records, the damage a crash left, the open intents.

Its own module because replay is the one place that must tolerate every kind of damage, and reads both kinds
of line: records (`{"seq":…}`) and intents with their close lines (intents.py). What a crash leaves: a torn
last line (no newline: the process died mid-write, the record was never durable, so never reported) is cut
off with a warning; a line that does not parse or repeats a seq is skipped with a warning. (A missing or
unreadable ack file counts as "nothing acknowledged", ledger_ack.py: the operator's own cursor still filters
what it already counted.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pydantic

from tokenbudget_api.usage import UsageRecord
from tokenbudget_sidecar import intents
from tokenbudget_sidecar.ledger_segments import SEGMENT_RE

log = logging.getLogger("tokenbudget_sidecar.ledger")

T = TypeVar("T")


@dataclass(frozen=True)
class Found:
    records: list[UsageRecord]  # above the acknowledgement cursor, in seq order
    last: int  # the highest seq in the files
    torn: int  # torn last lines cut off
    skipped: int  # lines that do not parse, or repeat a seq
    interrupted: list[UsageRecord]  # intents no record or close line closed, in write order
    segments: list[tuple[int, Path]]  # (base seq, path), oldest first


def replay(directory: Path, acked: int) -> Found:
    """Every segment of `directory`, oldest first; a torn last line is cut off the file (it was never durable)."""
    found = sorted((int(m.group(1)), directory / name)
                   for name in os.listdir(directory) if (m := SEGMENT_RE.match(name)))
    records: list[UsageRecord] = []
    segments: list[tuple[int, Path]] = []
    last, torn, skipped = 0, 0, 0
    opened: dict[str, UsageRecord] = {}  # intents, first copy of each
    closed: set[str] = set()  # request_ids with a record or a close line (anywhere: order does not matter)
    for base, path in found:
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            torn += 1
            log.warning("ledger segment ends in a torn line (the process died mid-write); discarding it",
                        extra={"record": {"path": str(path), "bytes": len(data) - end}})
            os.truncate(path, end)  # so the next replay does not warn again, and appends stay aligned
        for lineno, line in enumerate(data[:end].splitlines(), 1):
            if not line.strip():
                continue
            if intents.is_marker(line):
                marker = _parse(intents.decode, line, "intent line", path, lineno)
                if marker is None:
                    skipped += 1
                    continue
                if marker.intent is not None:
                    opened.setdefault(marker.intent.request_id, marker.intent)
                if marker.close is not None:
                    closed.add(marker.close)
                continue
            record = _parse(UsageRecord.model_validate_json, line, "line", path, lineno)
            if record is None:
                skipped += 1
                continue
            closed.add(record.request_id)
            if record.seq <= last:
                skipped += 1
                log.warning("ledger line repeats or reorders a seq; skipping it", extra={"record": {
                    "path": str(path), "line": lineno, "seq": record.seq, "after": last}})
                continue
            last = record.seq
            if record.seq > acked:
                records.append(record)
        segments.append((base, path))
    interrupted = [intent for request_id, intent in opened.items() if request_id not in closed]
    return Found(records, last, torn, skipped, interrupted, segments)


def _parse(parse: Callable[[bytes], T], line: bytes, what: str, path: Path, lineno: int) -> T | None:
    """`parse(line)`, or None with a warning for a line that does not parse (the caller counts it skipped)."""
    try:
        return parse(line)
    except pydantic.ValidationError as exc:
        log.warning(f"ledger {what} does not parse; skipping it", extra={"record": {
            "path": str(path), "line": lineno, "error": exc.errors()[0]["msg"]}})
        return None
