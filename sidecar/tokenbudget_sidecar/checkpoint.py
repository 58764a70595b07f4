"""What acknowledged usage records counted in each window, kept next to the ledger so a restart forgets nothing.

Why: the ledger deletes records once the operator acknowledges them, and a restarted sidecar runs its
startup policy (the embedded default: no budget) until the operator pushes its own. Without this file the
operator's budgets came back with only the unacknowledged records, or nothing at all, so a pod could spend
its lease, or a whole limit, a second time in the same period.

What is stored (`checkpoint.json` in the ledger directory), for the records with seq ≤ `cursor` and no other:

- `windows`: per budget, limit (its name and shape: period or duration, per, unit, time zone) and key, the
  amount counted in each slot (a calendar period or a rolling bucket, by its start, with the instant it
  stops counting). Slots that stopped counting are dropped; a per-key limit keeps its
  `MAX_KEYS_PER_LIMIT` most recently used keys, as the windows do.
- `loose`: records of budgets the policy in force does not name (after a restart, the operator's budgets
  until its push; the operator acknowledges before it pushes), summed per user, model and second since
  their slots are not known yet. A policy naming the budget turns them into slots.
- `lostBefore`: set when the file was missing or unreadable while the ledger had acknowledged records: use
  before that instant may be missing, and `Window.history_clears_at` lets `failMode` decide.

One rule attributes every record (`BudgetState.contributions`, the one settlement follows), with the policy
in force when it is attributed: at an acknowledgement for the records acknowledged, at seeding for the
records still in the ledger. Seeding happens to every budget a policy brings that the previous one did not
have (`Admission.adopt` keeps the rest): at start for the startup policy, on a push for new names. Its
windows get the checkpoint's slots of limits of the same name and shape, then its loose sums, then the
ledger's records above `cursor` that name it.

Order on an acknowledgement (State.acknowledge): attribute on the event loop (the records are still in
memory), write this file off the loop (temp file, fsync, rename, fsync of the directory), and only then
let the ledger persist the cursor and delete segments. A crash in between leaves records with seq ≤
`cursor` in the ledger: the operator is offered them again (its cursor filters them) and seeding skips
them, so no record counts twice and none is lost. A failed write leaves the ledger's cursor where it was.

Cost: each window's JSON is re-encoded only when it changed; the write joins the pieces on a thread and
checks them with a SHA-256 (second line), so a truncated or damaged file is detected, not half-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import heapq
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from pathlib import Path
from typing import Any

from tokenbudget_api.tokenbudget import Limit
from tokenbudget_api.usage import Outcome, UsageRecord
from tokenbudget_api.windows import period_bounds, rolling_granularity
from tokenbudget_sidecar.amounts import Spend
from tokenbudget_sidecar.budget import MAX_KEYS_PER_LIMIT, BudgetState

log = logging.getLogger(__name__)

FILE = "checkpoint.json"
VERSION = 1
LOOSE_KEEP = dt.timedelta(days=32)  # loose sums of a budget no policy names for this long are dropped
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = 1_000_000
_EXACT = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow])  # sums never round (as windows.py)

LimitShape = tuple[str, str]  # (limit name, shape)
WindowId = tuple[str, LimitShape, str | None]  # (budget, limit shape, key)
Slots = dict[int, tuple[Decimal, int]]  # slot start (µs since the epoch) -> (amount, end of counting in µs)
LooseKey = tuple[str | None, str, int]  # (user, model, second since the epoch)


class CheckpointError(ValueError):
    """The file is not a checkpoint this version wrote whole."""


def _us(at: dt.datetime) -> int:
    return (at - _EPOCH) // dt.timedelta(microseconds=1)


def _at(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def shapes_of(b: BudgetState) -> dict[str, LimitShape]:
    """Each limit's name and shape (what its counts depend on, BudgetState.shape), by name."""
    return {lim.name: (lim.name, "|".join(part or "" for part in b.shape(lim))) for lim in b.spec.limits or []}


class Checkpoint:
    """Slots and loose sums of the records up to `cursor`; in memory, encoded for CheckpointFile."""

    def __init__(self, cursor: int = 0, lost_before: dt.datetime | None = None) -> None:
        self.cursor = cursor
        self.lost_before = lost_before
        self.slots: dict[str, dict[LimitShape, dict[str | None, Slots]]] = {}
        self.loose: dict[str, dict[LooseKey, tuple[int, Decimal, int]]] = {}
        self._expiries: list[tuple[int, int, WindowId, int]] = []  # heap: (end µs, tie, window, slot start)
        self._tie = itertools.count()
        self._periods: dict[tuple[str, str], tuple[int, int]] = {}  # last calendar period seen per (period, tz)
        # Each window's JSON: its head, and one piece per slot, re-encoded only when that slot changed
        # (`_dirty`: the slots changed per window, None for all); `_frozen` is what a write thread gets.
        self._encoded: dict[WindowId, tuple[str, dict[int, str]]] = {}
        self._frozen: dict[WindowId, tuple[str, tuple[str, ...]]] = {}
        self._dirty: dict[WindowId, set[int] | None] = {}
        self._bulk = False  # decoding: the expiry heap is built once at the end
        self._loose_fragments: dict[str, str] = {}
        self._loose_dirty: set[str] = set()

    # ----- counting -------------------------------------------------------------------------------------

    def absorb(self, records: Iterable[UsageRecord], budgets: Iterable[BudgetState], cursor: int,
               now: dt.datetime) -> int:
        """Count the records with `self.cursor` < seq ≤ `cursor` (in seq order) and move the cursor there.

        `budgets`: the policy in force; a record's other budgets go to `loose`. Returns the records counted.
        """
        if cursor <= self.cursor:
            return 0
        known = {b.name: (b, shapes_of(b)) for b in budgets}
        now_us = _us(now)
        counted = 0
        for rec in records:
            if rec.seq <= self.cursor:
                continue
            if rec.seq > cursor:
                break
            counted += 1
            if rec.outcome is Outcome.REFUSED or not rec.budgets:
                continue
            spend = Spend.of_record(rec)
            for name in rec.counted_budgets():
                if (plan := known.get(name)) is not None:
                    self._attribute(*plan, spend, now_us)
                else:
                    self._keep_loose(name, spend)
        self.cursor = cursor
        self.prune(now)
        return counted

    def seed(self, budgets: Iterable[BudgetState], records: Iterable[UsageRecord], now: dt.datetime) -> None:
        """Give `budgets` (new to this process's policy, no windows yet) everything they counted before.

        The checkpoint's slots of limits with the same name and shape, the loose sums naming them (which
        become slots), then `records` (the ledger's unacknowledged ones) above the cursor that name them, or
        that were made before any policy was pushed (`awaiting_policy`).
        """
        fresh = {b.name: b for b in budgets}
        if not fresh:
            return
        now_us = _us(now)
        for b in fresh.values():
            shapes = shapes_of(b)
            for spend in self._take_loose(b.name):
                self._attribute(b, shapes, spend, now_us)
            limits = {shapes[lim.name]: lim for lim in b.spec.limits or []}
            for limit_shape, keys in self.slots.get(b.name, {}).items():
                limit = limits.get(limit_shape)
                if limit is None:
                    continue  # another limit now, or the same name with other edges: it starts afresh
                for key, slots in keys.items():
                    # Newest first: a rolling counter then never rescans its buckets for expired ones.
                    live = sorted(((start, amount) for start, (amount, end) in slots.items() if end > now_us),
                                  reverse=True)
                    if live:
                        b.seed(limit, key, ((_at(start), amount) for start, amount in live))
            if self.lost_before is not None:
                b.history_lost_before = self.lost_before
        for rec in records:
            if rec.seq <= self.cursor or rec.outcome is Outcome.REFUSED:
                continue
            # A call made before the first push named no budget: it counts in every one the push brings.
            named = (list(fresh.values()) if rec.awaiting_policy
                     else [fresh[n] for n in rec.counted_budgets() if n in fresh])
            if named:
                spend = Spend.of_record(rec)
                for budget in named:
                    budget.count(spend)

    def prune(self, now: dt.datetime) -> None:
        """Drop slots that no longer count at `now`, and loose sums too old to count anywhere."""
        now_us = _us(now)
        while self._expiries and self._expiries[0][0] <= now_us:
            end, _, wid, start = heapq.heappop(self._expiries)
            budget, limit_shape, key = wid
            keys = self.slots.get(budget, {}).get(limit_shape, {})
            slots = keys.get(key)
            if slots is None or slots.get(start, (None, None))[1] != end:
                continue  # evicted with its key, or gone already
            del slots[start]
            self._changed(wid, start)
            if not slots:
                del keys[key]
                if not keys:
                    del self.slots[budget][limit_shape]
                    if not self.slots[budget]:
                        del self.slots[budget]
        if self.loose:
            oldest = (now_us - LOOSE_KEEP // dt.timedelta(microseconds=1)) // _US
            for name in list(self.loose):
                sums = self.loose[name]
                stale = [k for k in sums if k[2] < oldest]
                for k in stale:
                    del sums[k]
                if stale:
                    self._loose_dirty.add(name)
                if not sums:
                    del self.loose[name]

    def _attribute(self, b: BudgetState, shapes: dict[str, LimitShape], spend: Spend, now_us: int) -> None:
        at_us = _us(spend.at)
        for limit, key, amount in b.contributions(spend):
            start, end = self._slot(b, limit, at_us)
            if end > now_us:
                self._add(b.name, shapes[limit.name], key, start, end, amount)

    def _slot(self, b: BudgetState, limit: Limit, at_us: int) -> tuple[int, int]:
        """The slot `at_us` falls in, (start, end of counting), with the windows' own edges (windows.py)."""
        seconds = limit.rolling_seconds
        if seconds is not None:
            g_us = rolling_granularity(seconds) * _US
            start = at_us // g_us * g_us
            return start, start + g_us + seconds * _US
        assert limit.period is not None
        cache = (limit.period.value, b.spec.time_zone)
        span = self._periods.get(cache)
        if span is None or not span[0] <= at_us < span[1]:
            lo, hi = period_bounds(limit.period, b.spec.time_zone, _at(at_us))
            span = self._periods[cache] = (_us(lo), _us(hi))
        return span

    def _add(self, budget: str, limit_shape: LimitShape, key: str | None, start: int, end: int,
             amount: Decimal) -> None:
        keys = self.slots.setdefault(budget, {}).setdefault(limit_shape, {})
        slots = keys.pop(key, None)  # re-inserted last: the most recently used key
        if slots is None:
            slots = {}
            if key is not None and len(keys) >= MAX_KEYS_PER_LIMIT:
                oldest = next(iter(keys))
                del keys[oldest]
                self._dirty[budget, limit_shape, oldest] = None
        keys[key] = slots
        wid = (budget, limit_shape, key)
        held = slots.get(start)
        if held is None:
            expiry = (end, next(self._tie), wid, start)
            if self._bulk:
                self._expiries.append(expiry)
            else:
                heapq.heappush(self._expiries, expiry)
            slots[start] = (amount, end)
        else:
            slots[start] = (_EXACT.add(held[0], amount), end)
        self._changed(wid, start)

    def _changed(self, wid: WindowId, start: int) -> None:
        if wid not in self._dirty:
            self._dirty[wid] = {start}
        elif (starts := self._dirty[wid]) is not None:
            starts.add(start)

    def _keep_loose(self, name: str, spend: Spend) -> None:
        sums = self.loose.setdefault(name, {})
        key = (spend.user, spend.model, _us(spend.at) // _US)
        tokens, usd, requests = sums.get(key, (0, Decimal(0), 0))
        sums[key] = (tokens + spend.tokens, _EXACT.add(usd, spend.cost_usd), requests + spend.requests)
        self._loose_dirty.add(name)

    def _take_loose(self, name: str) -> Iterator[Spend]:
        sums = self.loose.pop(name, {})
        if sums:
            self._loose_dirty.add(name)
        for (user, model, second), (tokens, usd, requests) in sums.items():
            yield Spend(user, model, _at(second * _US), tokens, usd, requests)

    # ----- the file's contents ----------------------------------------------------------------------------

    @property
    def windows(self) -> int:
        return sum(len(keys) for limits in self.slots.values() for keys in limits.values())

    def encode(self) -> tuple[str, list[tuple[str, tuple[str, ...]]], list[str]]:
        """The document's head and its pieces; only what changed since the last call is encoded again.

        Runs on the event loop (it reads live state); joining, hashing and writing are CheckpointFile's.
        """
        for wid, starts in self._dirty.items():
            budget, limit_shape, key = wid
            slots = self.slots.get(budget, {}).get(limit_shape, {}).get(key)
            if not slots:
                self._encoded.pop(wid, None)
                self._frozen.pop(wid, None)
                continue
            encoded = self._encoded.get(wid)
            if encoded is None or starts is None:
                head = json.dumps([budget, *limit_shape, key], separators=(",", ":"))[:-1]
                encoded = self._encoded[wid] = (head, {s: _slot(s, a, e) for s, (a, e) in slots.items()})
            else:
                pieces = encoded[1]
                for s in starts:
                    held = slots.get(s)
                    if held is None:
                        pieces.pop(s, None)
                    else:
                        pieces[s] = _slot(s, *held)
            self._frozen[wid] = (encoded[0], tuple(encoded[1].values()))
        self._dirty.clear()
        for name in self._loose_dirty:
            if sums := self.loose.get(name):
                self._loose_fragments[name] = json.dumps(
                    [name, [[u, m, s, t, str(usd), n] for (u, m, s), (t, usd, n) in sums.items()]],
                    separators=(",", ":"))
            else:
                self._loose_fragments.pop(name, None)
        self._loose_dirty.clear()
        head = json.dumps({"version": VERSION, "cursor": self.cursor,
                           "lostBefore": self.lost_before.isoformat() if self.lost_before else None},
                          separators=(",", ":"))
        return head, list(self._frozen.values()), list(self._loose_fragments.values())

    @staticmethod
    def document(head: str, windows: list[tuple[str, tuple[str, ...]]], loose: list[str]) -> bytes:
        """The file: the JSON document, a newline, its SHA-256 in hex (off the loop: it copies everything)."""
        joined = ",".join(f'{w},[{",".join(slots)}]]' for w, slots in windows)
        body = f'{head[:-1]},"windows":[{joined}],"loose":[{",".join(loose)}]}}'.encode()
        return body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        """A checkpoint from the file's bytes; CheckpointError for anything but a whole, valid file."""
        body, _, rest = data.partition(b"\n")
        if rest.strip() != hashlib.sha256(body).hexdigest().encode():
            raise CheckpointError("checksum mismatch (truncated or damaged)")
        try:
            doc = json.loads(body)
            if doc["version"] != VERSION:
                raise CheckpointError(f"version {doc['version']!r}, this sidecar reads {VERSION}")
            lost = doc.get("lostBefore")
            cp = cls(_int(doc["cursor"]), dt.datetime.fromisoformat(_str(lost)) if lost is not None else None)
            cp._bulk = True
            if cp.lost_before is not None and cp.lost_before.tzinfo is None:
                raise CheckpointError("lostBefore has no time zone")
            for budget, name, shape, key, slots in doc["windows"]:
                for start, end, amount in slots:
                    value = _amount(amount)
                    if _int(end) <= _int(start):
                        raise CheckpointError("a slot ends before it starts")
                    cp._add(_str(budget), (_str(name), _str(shape)), _key(key), start, end, value)
            for budget, sums in doc["loose"]:
                for user, model, second, tokens, usd, requests in sums:
                    cp._keep_loose(_str(budget), Spend(_key(user), _str(model), _at(_int(second) * _US),
                                                       _int(tokens), _amount(usd), _int(requests)))
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, InvalidOperation, OverflowError) as exc:
            raise CheckpointError(f"malformed: {exc!r}") from exc
        heapq.heapify(cp._expiries)
        cp._bulk = False
        return cp


def _slot(start: int, amount: Decimal, end: int) -> str:
    return f'[{start},{end},"{amount}"]'


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise CheckpointError(f"expected a non-negative integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise CheckpointError(f"expected a string, got {v!r}")
    return v


def _key(v: Any) -> str | None:
    return None if v is None else _str(v)


def _amount(v: Any) -> Decimal:
    value = Decimal(_str(v))
    if not value.is_finite() or value < 0:
        raise CheckpointError(f"expected a non-negative amount, got {v!r}")
    return value


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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path.with_name(FILE + ".tmp"))  # a write that never got renamed
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
        data = Checkpoint.document(head, windows, loose)
        tmp = self.path.with_name(FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)  # the rename itself is durable before the ledger may delete what it covers
        finally:
            os.close(dfd)
        return len(data)


__all__ = ["Checkpoint", "CheckpointError", "CheckpointFile"]
