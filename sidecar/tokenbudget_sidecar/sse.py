"""An incremental Server-Sent Events splitter that keeps each event's raw bytes.

The proxy forwards upstream bytes untouched and parses a copy on the side, so this parser only has to
find events; it must cope with `\\n`, `\\r\\n` and `\\r` line ends, with a CRLF pair split across two reads,
and with a last event that has no blank line after it (flushed at EOF).

It is fed what the network hands over, which an upstream decides: each read is scanned once, only its new
bytes, and an event spanning reads is kept in one growing buffer (never re-copied per read), so the work is
linear in the stream whatever the chunking. The buffer is bounded: an event past MAX_EVENT_BYTES is not
assembled. Its bytes are handed back as they come, as `Unread` events with nothing to read (the proxy
re-emits events' `raw` for OpenAI chat streams, so the app still gets every byte), up to the blank line that
ends it; `SSEParser.oversized` counts such events, so the caller can tell metering missed one.

Every byte fed comes back in exactly one event's `raw`, in order: a block of comments (keep-alives such as
`: ping`), ids or blank lines only is an event with nothing to read (event and data ""), so the relay, which
forwards events' raw where it hides the injected usage chunk, passes keep-alives on to the app.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# The largest event read for usage. Generous on purpose: an image stream's `image_generation.completed` event
# carries the whole image in base64 next to its usage (a 1536x1024 PNG can pass 6 MB), and losing that event
# loses the call's metering. Past it, an upstream sending one endless event costs this much memory, no more.
MAX_EVENT_BYTES = 16 * 1024 * 1024

LF = 0x0A


@dataclass(frozen=True, slots=True)
class Event:
    event: str  # the `event:` field, "" when absent
    data: str  # `data:` lines joined with "\n"
    raw: bytes  # the bytes of the whole event, terminator included
    oversized: ClassVar[bool] = False  # see Unread (a class attribute: a fourth field made every event slower)


class Unread(Event):
    """A piece of an event past the cap: `raw` to forward as is, nothing to read (event and data are "")."""

    __slots__ = ()
    oversized = True


class SSEParser:
    """Feed bytes, get complete events; `close()` flushes what is left at end of stream."""

    __slots__ = ("_cr", "_data", "_done", "_event", "_held", "_line", "_max", "_skip", "oversized", "work")

    def __init__(self, max_event: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event
        self._held = bytearray()  # the event in progress as received so far, its unfinished line last
        self._line = 0  # length of that unfinished line (its bytes are the last of _held unless skipping)
        self._cr = False  # the last read ended with a line's \r: a \n opening the next read is its other half
        self._done = False  # ... and that line was blank: the event is complete once that \n is known
        self._skip = False  # in an event past the cap: hand its bytes back until its blank line
        self._event = ""
        self._data: list[str] = []
        self.oversized = 0  # events past the cap: not read, their bytes handed back as `Unread` events
        self.work = 0  # bytes scanned for line ends plus bytes copied into or out of _held (linear, tests say)

    @property
    def buffered(self) -> int:
        """Bytes held for the event in progress (at most the cap between reads)."""
        return len(self._held)

    def feed(self, chunk: bytes) -> list[Event]:
        """The events this read completes, in order, `Unread` pieces of an oversized one among them."""
        out: list[Event] = []
        n = len(chunk)
        if not n:
            return out
        lf = chunk.find(b"\n")  # the next \n and \r (n when there is none): each byte looked at once per kind
        cr = chunk.find(b"\r")
        if lf < 0 and cr < 0 and not self._cr:  # no line end in this read: the line in progress goes on
            self._line += n
            self.work += 3 * n  # two finds looked at each byte, and it is kept
            if self._skip:
                self._pass(out, chunk, 0, n)
            elif len(self._held) + n > self._max:
                self._oversize(out, chunk, 0, n)
            else:
                self._held += chunk
            return out
        if lf < 0:
            lf = n
        if cr < 0:
            cr = n
        work = lf + cr
        pos = start = 0  # pos: the first byte not scanned; start: the first byte not yet in _held or handed back
        if self._cr:
            self._cr = False
            if chunk[0] == LF:
                pos = 1
            if self._done:
                self._done = False
                self._end(out, chunk, 0, pos)
                start = pos
        while pos < n:
            if lf < pos:
                lf = chunk.find(b"\n", pos)
                if lf < 0:
                    lf = n
                work += lf - pos
            if cr < pos:
                cr = chunk.find(b"\r", pos)
                if cr < 0:
                    cr = n
                work += cr - pos
            if cr < lf:
                end = cr
                if cr + 1 == n:  # may be half of \r\n: the next read says
                    nxt = n
                    self._cr = True
                else:
                    nxt = cr + 2 if chunk[cr + 1] == LF else cr + 1
            elif lf < n:
                end, nxt = lf, lf + 1
            else:
                break
            if end > pos or self._line:
                if self._skip:
                    pass
                elif self._line:  # the line began in an earlier read
                    held = self._held if self._line == len(self._held) else self._held[-self._line :]
                    line = b"".join((held, chunk[pos:end]))
                    work += 2 * len(line)
                    self._field(line)
                else:
                    self._field(chunk[pos:end])
                self._line = 0
            elif self._cr:  # a blank line whose \r ends the read: finish the event when the next read comes
                self._done = True
            elif self._skip or len(self._held) + nxt - start > self._max or not (self._data or self._event):
                self._end(out, chunk, start, nxt)
                start = nxt
            else:  # an event to read: the usual case
                raw = chunk[start:nxt]
                if self._held:  # it began in an earlier read
                    raw = b"".join((self._held, raw))
                    self._held.clear()
                    work += len(raw)
                out.append(Event(self._event, "\n".join(self._data), raw))
                self._event, self._data = "", []
                start = nxt
            pos = nxt
        if pos < n:
            self._line += n - pos
        if start < n:
            if self._skip:
                self._pass(out, chunk, start, n)
            elif len(self._held) + n - start > self._max:
                self._oversize(out, chunk, start, n)
            else:
                self._held += chunk[start:] if start else chunk
                work += n - start
        self.work += work
        return out

    def close(self) -> list[Event]:
        """End of stream: a last event without its blank line still counts (some servers omit it)."""
        out: list[Event] = []
        if not self._skip:
            if self._line:
                self._field(bytes(self._held[-self._line :]))
            if self._held:  # an event, or comments only (its bytes still reach the app: relay.py forwards raw)
                out.append(Event(self._event, "\n".join(self._data), bytes(self._held)))
        self._held.clear()
        self._line, self._cr, self._done, self._skip = 0, False, False, False
        self._event, self._data = "", []
        return out

    def _end(self, out: list[Event], chunk: bytes, start: int, stop: int) -> None:
        """The event in progress ends at chunk[stop]: read it, or hand it back if it is past the cap."""
        if self._skip:
            self._pass(out, chunk, start, stop)
            self._skip = False
        elif len(self._held) + stop - start > self._max:
            self.oversized += 1
            self._pass(out, chunk, start, stop)
        elif self._data or self._event:
            out.append(Event(self._event, "\n".join(self._data), self._take(chunk, start, stop)))
        elif self._held or stop > start:  # comments (keep-alives), ids or blank lines: nothing to read, but
            out.append(Event("", "", self._take(chunk, start, stop)))  # relay.py forwards events' raw: keep it
        self._event, self._data = "", []

    def _oversize(self, out: list[Event], chunk: bytes, start: int, stop: int) -> None:
        """The event in progress just passed the cap: stop reading it and hand back what was held."""
        self.oversized += 1
        self._skip = True
        self._event, self._data = "", []
        self._pass(out, chunk, start, stop)

    def _pass(self, out: list[Event], chunk: bytes, start: int, stop: int) -> None:
        """Hand back the held bytes and chunk[start:stop] unread, as one `Unread` event."""
        raw = self._take(chunk, start, stop)
        if raw:
            out.append(Unread("", "", raw))

    def _take(self, chunk: bytes, start: int, stop: int) -> bytes:
        """The held bytes then chunk[start:stop], emptying the buffer: no copy of the read when nothing is held."""
        if not self._held:
            return chunk[start:stop]
        raw = b"".join((self._held, chunk[start:stop]))
        self._held.clear()  # (which frees its memory: a bytearray emptied is shrunk)
        self.work += len(raw)
        return raw

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
