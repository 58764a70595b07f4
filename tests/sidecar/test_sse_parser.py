"""The SSE splitter the proxy reads a copy of each stream with (sse.py).

The network decides where reads split a stream, not the provider, so the events must be the same whatever the
chunking, `raw` included: for an OpenAI chat stream the proxy forwards the events' `raw` bytes (all but the
usage chunk it asked for on the app's behalf), so a byte lost or doubled there reaches the app. An upstream
that never ends an event must cost bounded memory and linear work, and the bytes of such an event must
still reach the app, only unread.

The reference below reads a whole stream at once, line by line, as the SSE specification says; the parser
must agree with it on any chunking.
"""

from __future__ import annotations

import itertools
import re
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_sidecar.dialects import DIALECTS, Call
from tokenbudget_sidecar.sse import MAX_EVENT_BYTES, Event, SSEParser, Unread

LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")


def reference(stream: bytes, cap: int = MAX_EVENT_BYTES) -> tuple[list[Event], int]:
    """Events of a whole stream, and how many blocks were past `cap` (their bytes handed back unread)."""
    events: list[Event] = []
    oversized = 0
    event, data, start = "", list[str](), 0

    def end(stop: int) -> None:
        nonlocal event, data, start, oversized
        if stop - start > cap:
            oversized += 1
            events.append(Unread("", "", stream[start:stop]))
        elif data or event:
            events.append(Event(event, "\n".join(data), stream[start:stop]))
        elif stop > start:  # comments, ids or blank lines only: nothing to read, the bytes handed back
            events.append(Event("", "", stream[start:stop]))
        event, data, start = "", [], stop

    def field(line: bytes) -> None:
        nonlocal event
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            event = value.decode("utf-8", "replace")

    pos = 0
    for m in LINE.finditer(stream):
        if m.start() != pos:
            break
        pos = m.end()
        line = m.group().rstrip(b"\r\n")
        if line:
            field(line)
        else:
            end(pos)
    if pos < len(stream):  # a last line without its line end
        field(stream[pos:])
    if start < len(stream):  # a last event without its blank line
        end(len(stream))
    return events, oversized


def parse(chunks: list[bytes], cap: int = MAX_EVENT_BYTES) -> tuple[list[Event], SSEParser]:
    parser = SSEParser(cap)
    events = [ev for chunk in chunks for ev in parser.feed(chunk)]
    return events + parser.close(), parser


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


# Streams made of what SSE streams are made of (fields, comments, each line end, blank lines, odd bytes),
# so the interesting cases (a CRLF split across reads, a last event without its blank line) come up often.
PIECES = st.sampled_from([b"data: ", b"data:", b"event: ", b"event:x", b": ping", b"id: 7", b"retry: 5",
                          b"\n", b"\r\n", b"\r", b"\n\n", b"\r\n\r\n", b"\r\r", b'{"usage": {"t": 1}}',
                          b"[DONE]", b"x", b"\xe2\x82", b"\xac", b" ", b":"])
STREAMS = st.one_of(st.lists(PIECES, max_size=60).map(b"".join), st.binary(max_size=300))
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=STREAMS, cuts=CUTS)
def test_events_and_their_raw_bytes_do_not_depend_on_where_reads_split_the_stream(stream: bytes,
                                                                                   cuts: list[int]) -> None:
    at_once, _ = parse([stream])
    chunked, _ = parse(split(stream, cuts))
    one_byte, _ = parse([c for i in range(len(stream)) for c in (stream[i : i + 1], b"")])  # empty reads too
    want, _ = reference(stream)
    assert at_once == want
    assert chunked == want
    assert one_byte == want
    assert b"".join(e.raw for e in chunked) == stream, "every byte once, in order: keep-alives reach the app"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=STREAMS, cuts=CUTS, cap=st.integers(min_value=1, max_value=40))
def test_an_event_past_the_cap_is_handed_back_unread_whatever_the_chunking(stream: bytes, cuts: list[int],
                                                                          cap: int) -> None:
    """Under a small cap: the events under it are read as usual, each block past it is counted once, and
    every byte the parser would have kept as an event's raw is handed back exactly once, in order."""
    chunked, parser = parse(split(stream, cuts), cap)
    want, oversized = reference(stream, cap)
    assert [e for e in chunked if not e.oversized] == [e for e in want if not e.oversized]
    assert b"".join(e.raw for e in chunked) == b"".join(e.raw for e in want)
    assert all(e.event == e.data == "" for e in chunked if e.oversized)
    assert parser.oversized == oversized


def test_each_line_end_a_comment_and_a_last_event_without_its_blank_line() -> None:
    stream = b": keep-alive\n\nevent: a\r\ndata: 1\r\n\r\ndata: 2\rdata: 3\r\r:c\ndata:4\n\ndata: last"
    events, _ = parse([stream])
    assert events == [Event("", "", b": keep-alive\n\n"),  # nothing to read; its bytes are relayed
                      Event("a", "1", b"event: a\r\ndata: 1\r\n\r\n"),
                      Event("", "2\n3", b"data: 2\rdata: 3\r\r"),
                      Event("", "4", b":c\ndata:4\n\n"),
                      Event("", "last", b"data: last")]


def test_a_crlf_split_across_two_reads_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r\n\r") == []  # the blank line's \r may be half of \r\n: not yet complete
    assert parser.feed(b"\ndata: y\n\n") == [Event("", "x", b"data: x\r\n\r\n"), Event("", "y", b"data: y\n\n")]
    assert parser.close() == []
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.close() == [Event("", "x", b"data: x\r\n\r")]


def test_an_endless_line_is_held_up_to_the_cap_and_the_next_event_is_read() -> None:
    cap = 64 * 1024
    parser = SSEParser(cap)
    out: list[Event] = []
    out += parser.feed(b"data: small\n\n")
    for _ in range(100):  # 100 reads of 4 KiB of one line: 400 KiB, six times the cap
        out += parser.feed(b"data: " + b"x" * 4090)
        assert parser.buffered <= cap
    out += parser.feed(b"\n\ndata: after\n\n")
    out += parser.close()
    assert [e.data for e in out if not e.oversized] == ["small", "after"]
    assert parser.oversized == 1
    passed = [e for e in out if e.oversized]
    assert b"".join(e.raw for e in passed) == (b"data: " + b"x" * 4090) * 100 + b"\n\n"
    assert out[-1] == Event("", "after", b"data: after\n\n")


def test_an_endless_event_of_many_lines_is_bounded_too() -> None:
    cap = 64 * 1024
    parser = SSEParser(cap)
    out: list[Event] = []
    for _ in range(10_000):
        out += parser.feed(b"data: y\n")
        assert parser.buffered <= cap
    out += parser.feed(b"\ndata: after\n\n")
    assert parser.oversized == 1
    assert [e.data for e in out if not e.oversized] == ["after"]


def test_an_endless_line_costs_bounded_memory_at_the_default_cap() -> None:
    """Measured from outside the parser (what Python allocates), so it holds for any implementation: 40 MiB
    of one line in 1 MiB reads, with each read dropped by the caller as the proxy does once it forwarded it."""
    chunk = b"x" * (1 << 20)
    parser = SSEParser()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        parser.feed(b"data: ")
        for _ in range(40):
            parser.feed(chunk)
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert peak <= MAX_EVENT_BYTES + 4 * len(chunk), peak
    assert parser.oversized == 1


def test_one_byte_reads_of_a_long_event_are_linear_work() -> None:
    """256 KiB of one event, fed a byte at a time: the parser scans and copies each byte a bounded number of
    times (re-copying the pending event on each read would be 2**35 bytes of work)."""
    size = 256 * 1024
    stream = b"data: " + b"z" * size + b"\n\n"
    parser = SSEParser()
    events = [ev for i in range(len(stream)) for ev in parser.feed(stream[i : i + 1])]
    assert events == [Event("", "z" * size, stream)]
    assert parser.work <= 8 * len(stream), parser.work


def test_a_typical_stream_in_small_reads_is_linear_work() -> None:
    body = b"".join(b'data: {"choices": [{"delta": {"content": "tok%d"}}]}\n\n' % i for i in range(2000))
    parser = SSEParser()
    events = [ev for i in range(0, len(body), 7) for ev in parser.feed(body[i : i + 7])]
    assert len(events) == 2000
    assert parser.work <= 8 * len(body), parser.work


def test_the_app_still_gets_every_byte_of_an_oversized_event_when_the_proxy_forwards_raw() -> None:
    """relay.relay_stream, for an OpenAI chat stream whose usage chunk we asked for: it forwards the raw bytes
    of the events the tracker keeps. An event past the cap comes back in pieces with nothing to read, which
    the tracker keeps, so the app's stream is the upstream's minus only the injected usage chunk."""
    big = b'data: {"choices": [{"delta": {"content": "' + b"a" * 300_000 + b'"}}]}\r\n\r\n'
    usage = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
    stream = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n' + big + usage + b"data: [DONE]\n\n"
    tracker = DIALECTS[DialectName.OPENAI].tracker(Call("chat", "gpt-4o", stream=True, injected_usage=True))
    parser = SSEParser(64 * 1024)
    forwarded = b""
    for i in range(0, len(stream), 4096):
        forwarded += b"".join(ev.raw for ev in parser.feed(stream[i : i + 4096]) if tracker.on_event(ev))
    forwarded += b"".join(ev.raw for ev in parser.close() if tracker.on_event(ev))
    assert forwarded == stream.replace(usage, b"")
    assert parser.oversized == 1
    assert tracker.reading.usage is not None
    assert tracker.reading.usage.output_tokens == 4
    assert tracker.reading.finished


def test_one_read_larger_than_the_cap_leaves_at_most_the_cap_held() -> None:
    cap = 64 * 1024
    for tail in (b"", b"\n" + b"y" * (2 * cap)):  # ending in the line, or in a later line of the event
        parser = SSEParser(cap)
        stream = b"data: a\n\ndata: " + b"x" * (3 * cap) + tail
        out = parser.feed(stream)
        assert parser.buffered <= cap
        out += parser.feed(b"\n\ndata: b\n\n")
        assert [e.data for e in out if not e.oversized] == ["a", "b"]
        assert b"".join(e.raw for e in out) == stream + b"\n\ndata: b\n\n"
        assert parser.oversized == 1
