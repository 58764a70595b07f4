"""The trace format: the sidecar's own usage records (tokenbudget_api.usage.UsageRecord), one JSON per line.

`export` writes what a pod's sidecar still holds (records not yet acknowledged by the operator), and
`simulate` replays any such file, so a trace taken from production, or written by hand or by a script,
replays through the same admission code the pod runs. Only a few fields matter to a replay (time, model,
usage, duration_ms, user, dialect, prompt_estimate, cost_usd); the README lists them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from tokenbudget_api.usage import UsageRecord


class TraceError(Exception):
    """A line that is not a usage record, with its line number."""


def read(path: Path) -> list[UsageRecord]:
    """Every record of a trace file, in time order (ties keep file order)."""
    with path.open(encoding="utf-8") as f:
        records = list(parse(f))
    return sorted(records, key=lambda r: r.time)


def parse(lines: Iterable[str]) -> Iterator[UsageRecord]:
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            yield UsageRecord.model_validate_json(line)
        except ValidationError as exc:
            raise TraceError(f"line {number}: not a usage record: {exc.errors()[0]['msg']} at "
                             f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])}") from exc


def write(records: Iterable[UsageRecord], out: TextIO) -> int:
    count = 0
    for rec in records:
        out.write(rec.model_dump_json() + "\n")
        count += 1
    return count
