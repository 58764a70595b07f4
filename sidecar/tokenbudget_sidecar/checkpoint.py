"""What the windows had counted, stored with every acknowledgement, so a restart forgets nothing.

The ledger keeps only unacknowledged records, and a restarted sidecar starts on its embedded policy until
the operator pushes its own: replaying the ledger alone left every window of the operator's budgets at
zero (or at the unacknowledged part), so a pod could spend its lease, or a whole limit, a second time.

Snapshot plus tail, as databases do: on each ack the sidecar stores every window's counter (`entries`)
together with `seq`, the last record they include (settlement counts a record and appends it with no
await in between, so "counted" and "seq ≤ seq" are the same set). It goes into the ledger's ack file
in the same rename as the cursor, so both change together or not at all, and the ledger only deletes
records at or below the cursor ≤ `seq`. After a restart a budget's windows are rebuilt when a policy
naming it arrives (the first push, or the startup policy): the snapshot's counters for that budget, then
the records above `seq` that name it. Windows whose shape changed (period, duration, per, unit, time
zone) are not restored, as on a policy push (`BudgetState.adopt`). Snapshots of budgets no policy
has named since the restart are kept for later pushes, for up to `KEEP` (the longest window).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import pydantic

from tokenbudget_sidecar.admission import Admission
from tokenbudget_sidecar.budget import BudgetState
from tokenbudget_sidecar.usage import UsageRecord

log = logging.getLogger(__name__)

KEEP = dt.timedelta(days=32)  # longer than a calendar month: older counters cannot count any more


class Saved(pydantic.BaseModel):
    """One window's counter."""

    budget: str
    window: str
    key: str | None = None
    shape: list[str | None]
    at: list[tuple[dt.datetime, Decimal]]


class Snapshot(pydantic.BaseModel):
    seq: int = pydantic.Field(ge=0)
    windows: list[Saved] = []


class Checkpoint:
    """The snapshot restored at start (waiting for the budgets it names) and the one stored with acks."""

    def __init__(self, restored: Mapping[str, Any] | None) -> None:
        self.seq = 0
        self.dormant: dict[str, list[Saved]] = {}
        if restored is None:
            return
        try:
            snap = Snapshot.model_validate(restored)
        except pydantic.ValidationError as exc:
            # Conservative would be refusing everything; a corrupt file is a bug, not an attack, so we log it
            # loudly and rebuild from the unacknowledged records alone, as before snapshots existed.
            log.error("window snapshot unreadable; windows restart from the unacknowledged records only",
                      extra={"record": {"errors": exc.error_count()}})
            return
        self.seq = snap.seq
        for saved in snap.windows:
            self.dormant.setdefault(saved.budget, []).append(saved)

    def restore(self, admission: Admission, budgets: Iterable[BudgetState], records: Iterable[UsageRecord]) -> None:
        """Rebuild `budgets` (new to this process's policy) from the snapshot and the records after it."""
        fresh = list(budgets)
        for b in fresh:
            for saved in self.dormant.pop(b.name, []):
                limit = next((lim for lim in b.spec.limits or [] if lim.name == saved.window), None)
                if limit is None or b.shape(limit) != saved.shape:
                    continue
                window = b.window(limit, saved.key)
                for at, amount in saved.at:
                    window.counter.add(amount, at)
        admission.replay([r for r in records if r.seq > self.seq], fresh)

    def snapshot(self, admission: Admission, seq: int, now: dt.datetime) -> dict[str, Any]:
        """Every window's counter as of record `seq` (the last appended), plus the still-dormant ones.

        Plain dicts, not `Saved` models: this runs on the event loop at every ack (benchmarks/sidecar_restart.py).
        """
        windows: list[dict[str, Any]] = []
        for b in admission.budgets:
            shapes: dict[str, list[str | None]] = {}
            for w in b.windows.values():
                if entries := w.counter.entries(now):
                    shape = shapes.get(w.limit.name) or shapes.setdefault(w.limit.name, b.shape(w.limit))
                    windows.append({"budget": b.name, "window": w.limit.name, "key": w.key, "shape": shape,
                                    "at": [[at.isoformat(), str(amount)] for at, amount in entries]})
        for name in [n for n, saved in self.dormant.items()
                     if all(not s.at or max(at for at, _ in s.at) < now - KEEP for s in saved)]:
            del self.dormant[name]
        windows += [s.model_dump(mode="json") for saved in self.dormant.values() for s in saved]
        return {"seq": seq, "windows": windows}


__all__ = ["Checkpoint", "Snapshot"]
