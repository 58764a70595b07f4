"""The usage checkpoint's file format (checkpoint.py): encoding it a piece at a time, and reading it back whole.

Why its own module: the format is what a restarted sidecar must read exactly as the previous one wrote it,
and is checked on every byte (a damaged file must be detected, not half-read); the counting in checkpoint.py
can change without touching it.

The file is one JSON document, a newline, and the document's SHA-256 in hex::

    {"version":1,"cursor":N,"lostBefore":null|"<ISO instant>",
     "windows":[[budget, limit name, limit shape, key|null, [[slot start µs, end of counting µs, "amount"], …]], …],
     "loose":[[budget, [[user|null, model, second, tokens, "usd", requests], …]], …]}

Cost: each window's JSON is re-encoded only when it changed (`Encoder`); joining the pieces and hashing
them copies everything, so that runs on the writing thread (`document`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from tokenbudget_sidecar.amounts import Spend

VERSION = 1
US = 1_000_000  # microseconds in a second
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

LimitShape = tuple[str, str]  # (limit name, shape)
WindowId = tuple[str, LimitShape, str | None]  # (budget, limit shape, key)
Slots = dict[int, tuple[Decimal, int]]  # slot start (µs since the epoch) -> (amount, end of counting in µs)
LooseKey = tuple[str | None, str, int]  # (user, model, second since the epoch)
LooseSums = dict[LooseKey, tuple[int, Decimal, int]]  # -> (tokens, USD, requests)
Windows = dict[str, dict[LimitShape, dict[str | None, Slots]]]  # budget -> limit shape -> key -> slots
Pieces = tuple[str, list[tuple[str, tuple[str, ...]]], list[str]]  # head, windows, loose sums: see `document`


class CheckpointError(ValueError):
    """The file is not a checkpoint this version wrote whole."""


def to_us(at: dt.datetime) -> int:
    return (at - _EPOCH) // dt.timedelta(microseconds=1)


def from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


class Encoder:
    """Each window's JSON: its head, and one piece per slot, re-encoded only when that slot changed.

    The counting side reports every change (`changed`, `evicted`, `loose_changed`); `encode` runs on the
    event loop (it reads live state) and hands out frozen pieces a writing thread may join.
    """

    def __init__(self) -> None:
        self._encoded: dict[WindowId, tuple[str, dict[int, str]]] = {}
        self._frozen: dict[WindowId, tuple[str, tuple[str, ...]]] = {}  # what a write thread gets
        self._dirty: dict[WindowId, set[int] | None] = {}  # the slots changed per window, None for all
        self._loose_fragments: dict[str, str] = {}
        self._loose_dirty: set[str] = set()

    def changed(self, wid: WindowId, start: int) -> None:
        if wid not in self._dirty:
            self._dirty[wid] = {start}
        elif (starts := self._dirty[wid]) is not None:
            starts.add(start)

    def evicted(self, wid: WindowId) -> None:
        self._dirty[wid] = None

    def loose_changed(self, name: str) -> None:
        self._loose_dirty.add(name)

    def encode(self, windows: Windows, loose: dict[str, LooseSums], cursor: int,
               lost_before: dt.datetime | None) -> Pieces:
        """The document's head and its pieces; only what changed since the last call is encoded again."""
        for wid, starts in self._dirty.items():
            budget, limit_shape, key = wid
            slots = windows.get(budget, {}).get(limit_shape, {}).get(key)
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
            if sums := loose.get(name):
                self._loose_fragments[name] = json.dumps(
                    [name, [[u, m, s, t, str(usd), n] for (u, m, s), (t, usd, n) in sums.items()]],
                    separators=(",", ":"))
            else:
                self._loose_fragments.pop(name, None)
        self._loose_dirty.clear()
        head = json.dumps({"version": VERSION, "cursor": cursor,
                           "lostBefore": lost_before.isoformat() if lost_before else None},
                          separators=(",", ":"))
        return head, list(self._frozen.values()), list(self._loose_fragments.values())


def _slot(start: int, amount: Decimal, end: int) -> str:
    return f'[{start},{end},"{amount}"]'


def document(head: str, windows: list[tuple[str, tuple[str, ...]]], loose: list[str]) -> bytes:
    """The file: the JSON document, a newline, its SHA-256 in hex (off the loop: it copies everything)."""
    joined = ",".join(f'{w},[{",".join(slots)}]]' for w, slots in windows)
    body = f'{head[:-1]},"windows":[{joined}],"loose":[{",".join(loose)}]}}'.encode()
    return body + b"\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"


@dataclass(frozen=True)
class Parsed:
    """A whole, valid file's contents, in file order."""

    cursor: int
    lost_before: dt.datetime | None
    slots: list[tuple[str, LimitShape, str | None, int, int, Decimal]]  # (budget, shape, key, start, end, amount)
    loose: list[tuple[str, Spend]]  # (budget, the sum as one spend)


def parse(data: bytes) -> Parsed:
    """The file's bytes checked and read; CheckpointError for anything but a whole, valid file."""
    body, _, rest = data.partition(b"\n")
    if rest.strip() != hashlib.sha256(body).hexdigest().encode():
        raise CheckpointError("checksum mismatch (truncated or damaged)")
    try:
        doc = json.loads(body)
        if doc["version"] != VERSION:
            raise CheckpointError(f"version {doc['version']!r}, this sidecar reads {VERSION}")
        lost = doc.get("lostBefore")
        cursor = _int(doc["cursor"])
        lost_before = dt.datetime.fromisoformat(_str(lost)) if lost is not None else None
        if lost_before is not None and lost_before.tzinfo is None:
            raise CheckpointError("lostBefore has no time zone")
        slots: list[tuple[str, LimitShape, str | None, int, int, Decimal]] = []
        for budget, name, shape, key, pieces in doc["windows"]:
            for start, end, amount in pieces:
                value = _amount(amount)
                if _int(end) <= _int(start):
                    raise CheckpointError("a slot ends before it starts")
                slots.append((_str(budget), (_str(name), _str(shape)), _key(key), start, end, value))
        loose = [(_str(budget), Spend(_key(user), _str(model), from_us(_int(second) * US), _int(tokens),
                                      _amount(usd), _int(requests)))
                 for budget, sums in doc["loose"] for user, model, second, tokens, usd, requests in sums]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, InvalidOperation, OverflowError) as exc:
        raise CheckpointError(f"malformed: {exc!r}") from exc
    return Parsed(cursor, lost_before, slots, loose)


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


__all__ = ["VERSION", "CheckpointError", "Encoder", "Parsed", "document", "from_us", "parse", "to_us"]
