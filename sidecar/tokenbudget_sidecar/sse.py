"""An incremental Server-Sent Events splitter that keeps each event's raw bytes.

The proxy forwards upstream bytes untouched and parses a copy on the side, so this parser only has to
find events; it must cope with `\\n`, `\\r\\n` and `\\r` line ends, with a CRLF pair split across two reads,
and with a last event that has no blank line after it (flushed at EOF).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    event: str  # the `event:` field, "" when absent
    data: str  # `data:` lines joined with "\n"
    raw: bytes  # the bytes of the whole event, terminator included


class SSEParser:
    """Feed bytes, get complete events; `close()` flushes what is left at end of stream."""

    __slots__ = ("_buf", "_data", "_event", "_pos")

    def __init__(self) -> None:
        self._buf = b""  # bytes of the event in progress (and any unread tail)
        self._pos = 0  # offset in _buf of the first line not parsed yet
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk
        events: list[Event] = []
        start, pos, n = 0, self._pos, len(buf)
        while pos < n:
            cr = buf.find(b"\r", pos)
            lf = buf.find(b"\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == n:  # a lone \r at the end may be half of \r\n: wait for the next read
                    break
                end, nxt = cr, (cr + 2 if buf[cr + 1] == 0x0A else cr + 1)
            else:
                end, nxt = lf, lf + 1
            line = buf[pos:end]
            pos = nxt
            if line:
                self._field(line)
                continue
            if self._data or self._event:
                events.append(Event(self._event, "\n".join(self._data), buf[start:pos]))
            start = pos
            self._event, self._data = "", []
        self._buf, self._pos = buf[start:], pos - start
        return events

    def close(self) -> list[Event]:
        """End of stream: a last event without its blank line still counts (some servers omit it)."""
        rest = self._buf[self._pos :].rstrip(b"\r\n")
        if rest:
            self._field(rest)
        out = [Event(self._event, "\n".join(self._data), self._buf)] if (self._data or self._event) else []
        self._buf, self._pos, self._event, self._data = b"", 0, "", []
        return out

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return  # comment / keep-alive
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
