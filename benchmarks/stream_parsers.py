#!/usr/bin/env python3
"""The stream parsers (sse.py, jsonarray.py) against the ones they replaced, in the same run.

Run on demand (it asserts nothing and exits 0 whatever the figures are)::

    .venv/bin/python benchmarks/stream_parsers.py            # about a minute
    .venv/bin/python benchmarks/stream_parsers.py --quick    # fewer repeats

The proxy feeds a copy of every streamed answer to one of these parsers, read by read, so their cost is
paid on every chunk of every stream. Each case parses one stream as the proxy does (feed each read, then
close) and prints, for the baseline and the current parser: the median microseconds per stream over the
repeats (old and new alternate, so drifts on the machine hit both alike) and the peak of what Python
allocated while parsing one stream (tracemalloc, in a separate pass, as tracing slows the parsing down).

Cases: (a) a typical OpenAI chat stream of 20 and of 200 small events, one event per read, and each event
split over two reads (a network read rarely ends where an event does); (b) the same in 7-byte reads; (c) one
1 MiB event in 4 KiB reads; (d) a Gemini JSON array of 50 elements: one element per read (the usual case),
each split over two reads, 4 KiB reads (a lagging reader: several elements and a split one per read) and
16-byte reads; (e) one 1 MiB Gemini element in 4 KiB reads.
"""

from __future__ import annotations

import argparse
import codecs
import gc
import json
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tokenbudget_sidecar.jsonarray import JSONArrayParser
from tokenbudget_sidecar.sse import SSEParser

# ---------------------------------------------------------------------------------------------------------
# BASELINE: the parsers as they were on main before the rewrite (commit 86a85ac), copied verbatim but for
# the class names, so the two are timed in the same process on the same inputs. Not used by the sidecar.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BaselineEvent:
    event: str
    data: str
    raw: bytes


class BaselineSSEParser:
    """sse.SSEParser as of 86a85ac: copies the pending event on every read, holds any amount."""

    __slots__ = ("_buf", "_data", "_event", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[BaselineEvent]:
        buf = self._buf + chunk
        events: list[BaselineEvent] = []
        start, pos, n = 0, self._pos, len(buf)
        while pos < n:
            cr = buf.find(b"\r", pos)
            lf = buf.find(b"\n", pos)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == n:
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
                events.append(BaselineEvent(self._event, "\n".join(self._data), buf[start:pos]))
            start = pos
            self._event, self._data = "", []
        self._buf, self._pos = buf[start:], pos - start
        return events

    def close(self) -> list[BaselineEvent]:
        rest = self._buf[self._pos :].rstrip(b"\r\n")
        if rest:
            self._field(rest)
        out = [BaselineEvent(self._event, "\n".join(self._data), self._buf)] if (self._data or self._event) else []
        self._buf, self._pos, self._event, self._data = b"", 0, "", []
        return out

    def _field(self, line: bytes) -> None:
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")


BASELINE_SEPARATORS = " \t\r\n[,]"


class BaselineJSONArrayParser:
    """jsonarray.JSONArrayParser as of 86a85ac: re-decodes the pending text on every read, holds any amount."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._json = json.JSONDecoder()
        self._text = ""

    def feed(self, chunk: bytes) -> list[BaselineEvent]:
        self._text += self._decoder.decode(chunk)
        events: list[BaselineEvent] = []
        while True:
            text = self._text.lstrip(BASELINE_SEPARATORS)
            self._text = text
            if not text:
                return events
            try:
                _, end = self._json.raw_decode(text)
            except ValueError:
                return events
            events.append(BaselineEvent("", text[:end], b""))
            self._text = text[end:]

    def close(self) -> list[BaselineEvent]:
        events = self.feed(self._decoder.decode(b"", final=True).encode())
        self._text = ""
        return events


# ---------------------------------------------------------------------------------------------------------
# The streams
# ---------------------------------------------------------------------------------------------------------


class Parser(Protocol):
    def feed(self, chunk: bytes) -> list[Any]: ...
    def close(self) -> list[Any]: ...


def openai_chat(events: int) -> list[bytes]:
    """One read per event, as an OpenAI chat stream with include_usage arrives (content, finish, usage, DONE)."""
    head = {"id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion.chunk",
            "created": 1741570283, "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_06737a9306"}
    out = []
    for i in range(events - 3):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" word{i}"}
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                 "usage": None}
        out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    finish = {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
              "usage": None}
    usage = {**head, "choices": [], "usage": {"prompt_tokens": 19, "completion_tokens": events - 3,
                                              "total_tokens": 16 + events}}
    out.append(b"data: " + json.dumps(finish, separators=(",", ":")).encode() + b"\n\n")
    out.append(b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def gemini_element(i: int, text: str) -> str:
    element = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": i, "totalTokenCount": 9 + i,
                                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}]},
               "modelVersion": "gemini-2.5-flash", "responseId": "Pb7PaOfOMoe0nvgPkq2LmQ0"}
    return json.dumps(element, indent=2)  # Gemini's streamed array is pretty-printed


def gemini_array(elements: int) -> list[bytes]:
    """One read per element, as Gemini's streamGenerateContent without alt=sse arrives."""
    texts = [gemini_element(i, f"Here is sentence {i} of the answer, with a few words in it.")
             for i in range(1, elements + 1)]
    out = ["[" + texts[0]] + ["\r\n," + t for t in texts[1:]] + ["\r\n]"]
    return [s.encode() for s in out]


def halves(reads: list[bytes]) -> list[bytes]:
    return [half for r in reads for half in (r[: len(r) // 2], r[len(r) // 2 :])]


def rechunk(reads: list[bytes], size: int) -> list[bytes]:
    whole = b"".join(reads)
    return [whole[i : i + size] for i in range(0, len(whole), size)]


def big_sse_event(size: int) -> list[bytes]:
    content = "x" * size
    chunk = {"choices": [{"index": 0, "delta": {"content": content}}]}
    return [b"data: " + json.dumps(chunk).encode() + b"\n\n"]


def big_gemini_element(size: int) -> list[bytes]:
    words = " ".join(f"w{i}" for i in range(size // 4))[:size]
    # Many parts rather than one long string: the nesting is what a slow reader pays for.
    parts = [{"text": words[i : i + 200]} for i in range(0, len(words), 200)]
    element = {"candidates": [{"content": {"parts": parts, "role": "model"}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 10}}
    return [b"[" + json.dumps(element).encode() + b"]"]


# ---------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------


def run(make: Callable[[], Parser], reads: list[bytes]) -> int:
    parser = make()
    n = 0
    for chunk in reads:
        n += len(parser.feed(chunk))
    return n + len(parser.close())


def median_us(make_old: Callable[[], Parser], make_new: Callable[[], Parser], reads: list[bytes],
              repeats: int) -> tuple[float, float]:
    old: list[float] = []
    new: list[float] = []
    gc.collect()
    for r in range(repeats):
        for make, into in ((make_old, old), (make_new, new)) if r % 2 == 0 else ((make_new, new), (make_old, old)):
            t = time.perf_counter_ns()
            run(make, reads)
            into.append((time.perf_counter_ns() - t) / 1000)
    return statistics.median(old), statistics.median(new)


def peak_kib(make: Callable[[], Parser], reads: list[bytes]) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        run(make, reads)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return peak / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args()
    scale = 5 if args.quick else 1

    mib = 1 << 20
    cases: list[tuple[str, str, list[bytes], int]] = [
        ("a", "OpenAI chat, 20 events, 1 event/read", openai_chat(20), 2000),
        ("a", "OpenAI chat, 200 events, 1 event/read", openai_chat(200), 400),
        ("a", "OpenAI chat, 200 events, 2 reads/event", halves(openai_chat(200)), 400),
        ("b", "OpenAI chat, 20 events, 7-byte reads", rechunk(openai_chat(20), 7), 400),
        ("b", "OpenAI chat, 200 events, 7-byte reads", rechunk(openai_chat(200), 7), 60),
        ("c", "one 1 MiB SSE event, 4 KiB reads", rechunk(big_sse_event(mib), 4096), 20),
        ("d", "Gemini array, 50 elements, 1 element/read", gemini_array(50), 400),
        ("d", "Gemini array, 50 elements, 2 reads/element", halves(gemini_array(50)), 400),
        ("d", "Gemini array, 50 elements, 4 KiB reads", rechunk(gemini_array(50), 4096), 400),
        ("d", "Gemini array, 50 elements, 16-byte reads", rechunk(gemini_array(50), 16), 60),
        ("e", "one 1 MiB Gemini element, 4 KiB reads", rechunk(big_gemini_element(mib), 4096), 10),
    ]
    print(f"{'':2} {'case':44} {'bytes':>9} {'reads':>6} | {'old µs':>10} {'new µs':>10} {'new/old':>7} |"
          f" {'old peak KiB':>12} {'new peak KiB':>12}")
    for tag, name, reads, repeats in cases:
        is_sse = tag in "abc"
        make_old: Callable[[], Parser] = BaselineSSEParser if is_sse else BaselineJSONArrayParser
        make_new: Callable[[], Parser] = SSEParser if is_sse else JSONArrayParser
        same = run(make_old, reads) == run(make_new, reads)
        old_us, new_us = median_us(make_old, make_new, reads, max(repeats // scale, 3))
        old_kib, new_kib = peak_kib(make_old, reads), peak_kib(make_new, reads)
        note = "" if same else "  (event counts differ!)"
        print(f"{tag:2} {name:44} {sum(map(len, reads)):>9} {len(reads):>6} | {old_us:>10.1f} {new_us:>10.1f}"
              f" {new_us / old_us:>7.2f} | {old_kib:>12.1f} {new_kib:>12.1f}{note}")


if __name__ == "__main__":
    main()
