"""An incremental splitter for a streamed JSON array: Gemini's `streamGenerateContent` without `alt=sse`.

Gemini answers such a stream as one JSON array whose elements arrive as they are generated
(`[{...}\\r\\n,{...}\\r\\n]`). The proxy forwards the bytes untouched and reads a copy with this, so the
chunks' `usageMetadata` is metered like the SSE form's (it was metered as output 0 before). Elements are
handed out as `sse.Event`s with the element's JSON text as `data`, so the dialect's stream tracker reads
both forms the same way.

Each read is scanned once: an element that arrives whole in one read is cut out by the C JSON decoder; one
that spans reads is followed character by character class (nesting depth, inside a string, after a
backslash; strings and runs of plain characters are skipped by a regular expression), so a large element in
small reads is linear work, not one re-decode of the pending text per read. What is held is bounded:
an element past MAX_ELEMENT_CHARS is skipped to its end unread and counted in `oversized` (the proxy
forwards the upstream's bytes itself, so only metering loses it). An element that is not JSON is dropped
and the elements after it are still read (the old parser waited behind it until the stream ended).
"""

from __future__ import annotations

import codecs
import json
import re

from tokenbudget_sidecar.sse import MAX_EVENT_BYTES, Event

SEPARATORS = " \t\r\n[,]"  # between elements; `[` and `]` too, so an element that is an array is read as its items
# The largest element read, in characters (held as UTF-8): as large as an SSE event, for the same reason (an
# image model's chunk carries the image inline next to its usage).
MAX_ELEMENT_CHARS = MAX_EVENT_BYTES

_START = re.compile(r"[^ \t\r\n\[,\]]")  # the first character of the next element
_SCALAR_END = re.compile(r'[ \t\r\n\[,\]{"]')  # what ends a number, true, false, null (or a word that is none)
_STRUCTURE = re.compile(r'[{}\[\]"]')  # in a container, outside strings: what changes the state
_STRING = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)  # a string's rest, up to its closing quote (or the end)

BETWEEN, CONTAINER, SCALAR = 0, 1, 2  # where the reading is: between elements, in `{...}` or `"..."`, in a scalar


class JSONArrayParser:
    """Feed bytes, get each complete top-level element; `close()` at end of stream."""

    __slots__ = ("_chars", "_decoder", "_depth", "_escape", "_held", "_json", "_max", "_mode", "_skip",
                 "_string", "oversized", "work")

    def __init__(self, max_element: int = MAX_ELEMENT_CHARS) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._json = json.JSONDecoder()
        self._max = max_element
        self._held = bytearray()  # the element in progress, UTF-8: compact however small the reads were
        self._chars = 0  # its length in characters, which the cap counts
        self._mode = BETWEEN
        self._depth = 0  # open `{` and `[` of the element in progress
        self._string = False  # inside one of its strings
        self._escape = False  # ... right after a backslash that ended the last read
        self._skip = False  # the element in progress is past the cap: follow it to its end, keep nothing
        self.oversized = 0  # elements past the cap, not read
        self.work = 0  # characters scanned plus characters copied into or out of _held (linear, tests say)

    @property
    def buffered(self) -> int:
        """Characters held for the element in progress (at most the cap between reads)."""
        return self._chars

    def feed(self, chunk: bytes) -> list[Event]:
        return self._read(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """End of stream: it ends a scalar; an unfinished object or string is dropped."""
        out = self._read(self._decoder.decode(b"", final=True))
        if self._mode == SCALAR:
            self._complete(out, "", 0, 0)
        self._reset()
        return out

    def _read(self, text: str) -> list[Event]:
        out: list[Event] = []
        n = len(text)
        i = start = 0  # i: the first character not scanned; start: where the element in progress begins
        work = 0
        while i < n:
            if self._mode == BETWEEN:
                m = _START.search(text, i)
                if m is None:
                    work += n - i
                    break
                start = m.start()
                work += start - i + 1
                c = text[start]
                i = start + 1
                if c == "{" or c == '"':
                    try:  # the usual case, a whole element in this read: the C decoder finds its end
                        end = self._json.raw_decode(text, start)[1]
                    except (ValueError, RecursionError):  # unfinished (or not JSON): follow it below
                        work += n - start
                        self._mode, self._depth, self._string = CONTAINER, 1 if c == "{" else 0, c == '"'
                    else:
                        work += end - start
                        self._complete(out, text, start, end, decoded=True)
                        i = end
                else:
                    self._mode = SCALAR
            elif self._mode == SCALAR:
                m = _SCALAR_END.search(text, i)
                if m is None:
                    work += n - i
                    break
                work += m.start() - i
                self._complete(out, text, start, m.start())
                i = m.start()
            elif self._string:
                if self._escape:
                    self._escape = False
                    i += 1
                    continue
                m = _STRING.match(text, i)
                k = m.end() if m else i  # it always matches (the empty string at least)
                work += k - i
                if k == n:
                    break
                if text[k] == "\\":  # a backslash that ends the read: the next read's first character is escaped
                    self._escape = True
                    break
                self._string = False
                i = k + 1
                if not self._depth:
                    self._complete(out, text, start, i)
            else:
                m = _STRUCTURE.search(text, i)
                if m is None:
                    work += n - i
                    break
                work += m.end() - i
                i = m.end()
                c = text[i - 1]
                if c == '"':
                    self._string = True
                elif c in "{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if not self._depth:
                        self._complete(out, text, start, i)
        if self._mode != BETWEEN and not self._skip:  # an element goes on in the next read
            if self._chars + n - start > self._max:
                self.oversized += 1
                self._skip = True
                self._held, self._chars = bytearray(), 0
            else:
                self._held += text[start:].encode()
                self._chars += n - start
                work += n - start
        self.work += work
        return out

    def _complete(self, out: list[Event], text: str, start: int, end: int, decoded: bool = False) -> None:
        """The element in progress ends at text[end]: hand it out if it is JSON, unless it is past the cap.

        Only JSON is handed out, so a tracker never meets a value its decoder chokes on (one nested past the
        recursion limit raised out of the old parser, and would out of the tracker's `json.loads`)."""
        if self._skip:
            pass
        elif self._chars + end - start > self._max:
            self.oversized += 1
        else:
            data = text[start:end]
            if self._held:
                data = self._held.decode() + data
                self.work += len(data)
            if not decoded:
                self.work += len(data)
                try:
                    self._json.decode(data)
                except (ValueError, RecursionError):
                    data = ""
            if data:
                out.append(Event("", data, b""))
        self._reset()

    def _reset(self) -> None:
        self._held, self._chars = bytearray(), 0
        self._mode, self._depth, self._string, self._escape, self._skip = BETWEEN, 0, False, False, False
