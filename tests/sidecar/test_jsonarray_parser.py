"""The streamed-JSON-array splitter the proxy reads Gemini's `streamGenerateContent` (without `alt=sse`) with.

The elements must come out the same whatever the chunking (the network decides it, not Gemini, and may split
a UTF-8 character too); an element that never ends must cost bounded memory, and the elements after one past
the cap must still be read; the work must be linear however small the reads.
"""

from __future__ import annotations

import itertools
import json
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenbudget_sidecar.jsonarray import MAX_ELEMENT_CHARS, JSONArrayParser


def parse(chunks: list[bytes], cap: int = MAX_ELEMENT_CHARS) -> tuple[list[str], JSONArrayParser]:
    parser = JSONArrayParser(cap)
    events = [ev for chunk in chunks for ev in parser.feed(chunk)]
    events += parser.close()
    assert all(ev.event == "" and ev.raw == b"" for ev in events)
    return [ev.data for ev in events], parser


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                          max_size=4), max_leaves=12)
# Top-level arrays are left out on purpose: `[` and `]` between elements are separators (an element that is
# an array is read as its items), as before.
ELEMENTS = st.lists(st.dictionaries(st.text(max_size=5), VALUES, max_size=4) | SCALARS, max_size=6)
GAPS = st.sampled_from(["", " ", "\r\n", "\n  ", "\t"])
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@st.composite
def arrays(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """A JSON array as Gemini streams it (`[{...}\\r\\n,{...}\\r\\n]`, with other gaps too) and each element's text."""
    texts = [json.dumps(v, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
             for v in draw(ELEMENTS)]
    body = "[" + ",".join(draw(GAPS) + t + draw(GAPS) for t in texts) + "]"
    return body.encode(), texts


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=arrays(), cuts=CUTS)
def test_each_element_is_read_whole_whatever_the_chunking(case: tuple[bytes, list[str]], cuts: list[int]) -> None:
    stream, texts = case
    assert parse([stream])[0] == texts
    assert parse(split(stream, cuts))[0] == texts
    assert parse([stream[i : i + 1] for i in range(len(stream))])[0] == texts


NOISE = st.sampled_from([b"[", b"]", b"{", b"}", b",", b'"', b"\\", b"\\\\", b"1", b"-2.5", b"tru", b"e", b" ",
                         b"\r\n", b"\xe2\x82", b"\xac", b'"a"', b":", b"x", b'{"u": 1}'])
NOISY = st.one_of(st.lists(NOISE, max_size=50).map(b"".join), st.binary(max_size=200))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=NOISY, cuts=CUTS, cap=st.sampled_from([3, 10, MAX_ELEMENT_CHARS]))
def test_what_is_read_from_any_bytes_does_not_depend_on_the_chunking(stream: bytes, cuts: list[int],
                                                                    cap: int) -> None:
    """Not JSON too (an upstream is read, never trusted): the same elements and the same oversized count."""
    whole, at_once = parse([stream], cap)
    chunked, parser = parse(split(stream, cuts), cap)
    assert chunked == whole
    assert parser.oversized == at_once.oversized


def test_an_element_that_is_not_json_does_not_stop_the_reading() -> None:
    """It used to: every later element, usage included, waited behind it until the stream ended."""
    data, _ = parse([b'[x, {"a": 1}\r\n,{"a": tru}, "\\q", {"usageMetadata": {"totalTokenCount": 3}}\r\n]'])
    assert data == ['{"a": 1}', '{"usageMetadata": {"totalTokenCount": 3}}']
    data, _ = parse([b'[x, {"a": 1}\r\n,{"a": t', b'ru}, "\\q", {"usageMetadata": {"totalTokenCount": 3}}\r\n]'])
    assert data == ['{"a": 1}', '{"usageMetadata": {"totalTokenCount": 3}}']


def test_a_number_split_across_reads_is_one_number() -> None:
    assert parse([b"[1", b"2, 3]"])[0] == ["12", "3"]
    assert parse([b"[1", b"2"])[0] == ["12"]  # the end of the stream ends it


def test_an_element_nested_deeper_than_the_recursion_limit_raises_nothing() -> None:
    """It raised RecursionError out of feed() (and so out of the proxy's relay loop); it is dropped now, as
    the tracker could not decode it either."""
    deep = b'{"a": ' * 5000 + b"1" + b"}" * 5000
    assert parse([b"[" + deep + b',{"b": 2}]'])[0] == ['{"b": 2}']
    assert parse([b"[" + deep[:7000], deep[7000:] + b',{"b": 2}]'])[0] == ['{"b": 2}']


def test_an_endless_element_is_held_up_to_the_cap_and_the_next_one_is_read() -> None:
    cap = 64 * 1024
    cases = [(b'{"text": "', b"x", b'"}'), (b'{"parts": [', b" 7,", b"]}"), (b"12345", b"7", b"")]
    for opening, filler, closing in cases:  # in a string, in a container, a scalar
        parser = JSONArrayParser(cap)
        out = parser.feed(b'[{"a": 1},' + opening)
        for _ in range(100):  # 100 reads of 4 KiB or more: six times the cap at least
            out += parser.feed(filler * 4096)
            assert parser.buffered <= cap
        out += parser.feed(closing + b', {"b": 2}]')
        out += parser.close()
        assert [ev.data for ev in out] == ['{"a": 1}', '{"b": 2}'], opening
        assert parser.oversized == 1


def test_an_endless_element_costs_bounded_memory_at_the_default_cap() -> None:
    """Measured from outside the parser (what Python allocates): 40 MiB of one string in 1 MiB reads."""
    chunk = b"x" * (1 << 20)
    parser = JSONArrayParser()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        peak = 0
        parser.feed(b'[{"text": "')
        for _ in range(40):
            parser.feed(chunk)
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    assert peak <= MAX_ELEMENT_CHARS + 4 * len(chunk), peak
    assert parser.oversized == 1


def element(i: int) -> dict[str, Any]:
    return {"candidates": [{"content": {"parts": [{"text": f"tok {i} \"q\" \\ é"}], "role": "model"},
                            "index": 0}], "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9 + i}}


def test_one_byte_reads_of_a_long_element_are_linear_work() -> None:
    """256 KiB of one element, a byte at a time: re-decoding the pending text on each read would be 2**35."""
    big = json.dumps({"parts": [element(i) for i in range(800)]})
    stream = ("[" + big + "]").encode()
    parser = JSONArrayParser()
    data = [ev.data for i in range(len(stream)) for ev in parser.feed(stream[i : i + 1])]
    assert data == [big]
    assert parser.work <= 8 * len(stream), parser.work


def test_a_typical_stream_in_small_reads_is_linear_work() -> None:
    texts = [json.dumps(element(i)) for i in range(300)]
    stream = ("[" + "\r\n,".join(texts) + "\r\n]").encode()
    parser = JSONArrayParser()
    data = [ev.data for i in range(0, len(stream), 7) for ev in parser.feed(stream[i : i + 7])]
    assert data == texts
    assert parser.work <= 8 * len(stream), parser.work


def test_one_read_larger_than_the_cap_leaves_at_most_the_cap_held() -> None:
    cap = 64 * 1024
    for opening in (b'{"text": "', b'{"parts": [1, '):
        parser = JSONArrayParser(cap)
        out = parser.feed(b'[{"a": 1},' + opening + b"7" * (3 * cap))
        assert parser.buffered <= cap
        out += parser.feed(b'"]}, {"b": 2}]' if opening.endswith(b'"') else b']}, {"b": 2}]')
        out += parser.close()
        assert [ev.data for ev in out] == ['{"a": 1}', '{"b": 2}'], opening
        assert parser.oversized == 1
