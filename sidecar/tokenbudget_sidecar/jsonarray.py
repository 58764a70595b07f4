"""An incremental splitter for a streamed JSON array: Gemini's `streamGenerateContent` without `alt=sse`.

Gemini answers such a stream as one JSON array whose elements arrive as they are generated
(`[{...}\\r\\n,{...}\\r\\n]`). The proxy forwards the bytes untouched and reads a copy with this, so the
chunks' `usageMetadata` is metered like the SSE form's (it was metered as output 0 before). Elements are
handed out as `sse.Event`s with the element's JSON text as `data`, so the dialect's stream tracker reads
both forms the same way.

The work is linear in the stream whatever the chunking (the old parser re-decoded the pending text on every
read). An element that arrives whole in one read is cut out by the C JSON decoder. One that spans reads is
tried again with the C decoder when a read brings a character that could end it, as long as the failed
tries cost at most RETRY_BUDGET times the element's size (an element split over a few reads, the usual
case, never needs more); past that it is followed character class by character class (nesting depth, in a
string, after a backslash; strings and runs of plain characters skipped by regular expressions) over the
new characters only. What is held is bounded:
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

# Failed whole-element decodes of an element that spans reads may cost this many times its size; then it is
# followed character by character (linear, but slower than the C decoder for a few reads).
RETRY_BUDGET = 2
RETRY_READS = 16  # ... and over at most this many reads (each held as a str: tiny reads would cost more)

# Where the reading is: between elements; in `{...}` or `"..."` that the C decoder will try again (PENDING) or
# that is followed character by character (CONTAINER); in a number, true, false or null.
BETWEEN, PENDING, CONTAINER, SCALAR = 0, 1, 2, 3


class JSONArrayParser:
    """Feed bytes, get each complete top-level element; `close()` at end of stream."""

    __slots__ = ("_chars", "_closer", "_depth", "_escape", "_held", "_json", "_max", "_mode", "_parts",
                 "_raw_decode", "_skip", "_string", "_tail", "_tried", "oversized", "work")

    def __init__(self, max_element: int = MAX_ELEMENT_CHARS) -> None:
        self._tail = b""
        self._json = json.JSONDecoder()
        self._raw_decode = self._json.raw_decode
        self._max = max_element
        self._parts: list[str] = []  # a PENDING element so far, one str per read
        self._held = bytearray()  # an element followed character by character, so far, in UTF-8: compact
        self._chars = 0  # the length of either in characters, which the cap counts
        self._mode = BETWEEN
        self._closer = "}"  # PENDING: its last character (`}` or `"`): a read without one cannot end it
        self._tried = 0  # PENDING: characters the failed tries decoded
        self._depth = 0  # open `{` and `[` of the element in progress
        self._string = False  # inside one of its strings
        self._escape = False  # ... right after a backslash that ended the last read
        self._skip = False  # the element in progress is past the cap: follow it to its end, keep nothing
        self.oversized = 0  # elements past the cap, not read
        self.work = 0  # characters looked at, plus each further look or copy of one (linear, tests say)

    @property
    def buffered(self) -> int:
        """Characters held for the element in progress (at most the cap between reads)."""
        return self._chars

    def close(self) -> list[Event]:
        """End of stream: it ends a scalar; an unfinished object or string is dropped."""
        out = self.feed(b"", final=True)  # (a PENDING element is followed to its end, or what follows it read)
        if self._mode == SCALAR:
            self._complete(out, "", 0, 0)
        self._reset()
        return out

    def feed(self, chunk: bytes, final: bool = False) -> list[Event]:
        """The elements this read completes. `final` (close() says it) ends a UTF-8 sequence left unfinished as
        U+FFFD, as codecs' decoders do."""
        if not self._tail and chunk[-1:] < b"\x80":  # it ends with an ASCII byte, so not inside a character
            text = chunk.decode("utf-8", "replace")
        else:
            chunk = self._tail + chunk
            text, used = codecs.utf_8_decode(chunk, "replace", final)  # as codecs' incremental decoder does
            self._tail = chunk[used:]  # a UTF-8 sequence the next read finishes (3 bytes at most)
        out: list[Event] = []
        i = start = 0  # i: the first character not scanned; start: where the element in progress begins
        if self._parts:  # PENDING
            text, i = self._resume(out, text, final)
        n = len(text)
        self.work += n  # each character's first look (by the search, the decoder or the scanner); more below
        while i < n:
            if not self._mode:  # BETWEEN
                if i:  # after an element of this read: a search, as a copy per element would be quadratic
                    m = _START.search(text, i)
                    start = m.start() if m else n
                else:  # at the read's start, the usual case: cheaper, one copy of the read
                    start = n - len(text.lstrip(SEPARATORS))
                if start == n:
                    break
                if text[start] in '{"':
                    try:  # the usual case, a whole element in this read: the C decoder finds its end
                        end = self._raw_decode(text, start)[1]
                    except (ValueError, RecursionError):  # unfinished (or not JSON)
                        self.work += n - start  # it is looked at again (followed, or held and tried again)
                        c = text[start]
                        if final or n - start > self._max:  # no more tries: follow it below
                            self._mode, self._depth, self._string = CONTAINER, 1 if c == "{" else 0, c == '"'
                            i = start + 1
                        else:  # held, tried again when a read may end it
                            self._mode, self._closer, self._tried = PENDING, "}" if c == "{" else '"', n - start
                            self._parts.append(text[start:])
                            self._chars = n - start
                            i = n
                        continue
                    if n > self._max and end - start > self._max:  # (no element of a read under the cap is past it)
                        self.oversized += 1
                    else:  # nothing held, nothing to reset: hand it out here
                        out.append(Event("", text[start:end], b""))
                    i = end
                else:
                    self._mode = SCALAR
                    i = start + 1
            elif self._mode == SCALAR:
                m = _SCALAR_END.search(text, i)
                if m is None:
                    break
                self._complete(out, text, start, m.start())
                i = m.start()
            elif self._string:
                if self._escape:
                    self._escape = False
                    i += 1
                    continue
                m = _STRING.match(text, i)
                k = m.end() if m else i  # it always matches (the empty string at least)
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
                    break
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
        if self._mode >= CONTAINER and not self._skip:  # an element followed character by character goes on
            if self._chars + n - start > self._max:
                self.oversized += 1
                self._skip = True
                self._held, self._chars = bytearray(), 0
            else:
                self._held += text[start:].encode()
                self._chars += n - start
                self.work += n - start
        return out

    def _resume(self, out: list[Event], text: str, final: bool) -> tuple[str, int]:
        """A read for a PENDING element: the text to go on with and where. Its end, if the C decoder finds it
        (the element then handed out), or all of it, held; or the element so far and the read, to follow."""
        n = len(text)
        size = self._chars + n
        parts = self._parts
        parts.append(text)
        if not final and size <= self._max and len(parts) <= RETRY_READS:
            if self._closer not in text:  # it cannot have ended in this read
                self._chars = size
                return text, n
            if self._tried + size <= RETRY_BUDGET * size:
                element = "".join(parts)
                self.work += 2 * size
                try:
                    end = self._raw_decode(element)[1]
                except (ValueError, RecursionError):
                    self._tried += size
                    self._chars = size
                    return text, n
                out.append(Event("", element[:end], b""))
                parts.clear()
                self._mode, self._chars, self._tried = BETWEEN, 0, 0
                return text, end - size + n  # in this read: it had not ended before (its closer is in this read)
        # Tried enough for its size, past the cap, or the stream ended: follow it from its start, once.
        element = "".join(parts)
        self.work += size + self._chars  # the join, and the scanner's look at what was held
        parts.clear()
        self._mode, self._depth, self._string = CONTAINER, 1 if self._closer == "}" else 0, self._closer == '"'
        self._chars, self._tried = 0, 0
        return element, 1

    def _complete(self, out: list[Event], text: str, start: int, end: int) -> None:
        """The element in progress (which spanned reads, or is not JSON, or is a scalar) ends at text[end]: hand
        it out if it is JSON, unless it is past the cap.

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
            self.work += len(data)
            try:
                self._json.decode(data)
            except (ValueError, RecursionError):
                data = ""
            if data:
                out.append(Event("", data, b""))
        self._reset()

    def _reset(self) -> None:
        self._parts.clear()
        self._held, self._chars, self._tried = bytearray(), 0, 0
        self._mode, self._depth, self._string, self._escape, self._skip = BETWEEN, 0, False, False, False
