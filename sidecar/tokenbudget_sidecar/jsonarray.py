"""An incremental splitter for a streamed JSON array: Gemini's `streamGenerateContent` without `alt=sse`.

Gemini answers such a stream as one JSON array whose elements arrive as they are generated
(`[{...}\\r\\n,{...}\\r\\n]`). The proxy forwards the bytes untouched and reads a copy with this, so the
chunks' `usageMetadata` is metered like the SSE form's (it was metered as output 0 before). Elements are
handed out as `sse.Event`s with the element's JSON text as `data`, so the dialect's stream tracker reads
both forms the same way.
"""

from __future__ import annotations

import codecs
import json

from tokenbudget_sidecar.sse import Event

SEPARATORS = " \t\r\n[,]"


class JSONArrayParser:
    """Feed bytes, get each complete top-level element; `close()` at end of stream."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._json = json.JSONDecoder()
        self._text = ""

    def feed(self, chunk: bytes) -> list[Event]:
        self._text += self._decoder.decode(chunk)
        events: list[Event] = []
        while True:
            text = self._text.lstrip(SEPARATORS)
            self._text = text
            if not text:
                return events
            try:
                _, end = self._json.raw_decode(text)
            except ValueError:  # incomplete (or not JSON at all): wait for more, give up at close()
                return events
            events.append(Event("", text[:end], b""))
            self._text = text[end:]

    def close(self) -> list[Event]:
        events = self.feed(self._decoder.decode(b"", final=True).encode())
        self._text = ""
        return events
