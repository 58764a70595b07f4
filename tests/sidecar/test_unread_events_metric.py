"""`tokenbudget_stream_unread_events_total`, end to end: an event too large to read is relayed whole and counted.

What makes the metric move is an event past the SSE parser's cap (sse.MAX_EVENT_BYTES, 16 MiB): its bytes are
handed back unread and forwarded, its usage (if it carried any) is missed. A reset by itself does not move it.
The case worth an end-to-end test is the two together, which is how a provider's giant event shows up in
practice when the connection then breaks: the upstream sends one answer delta of ~18 MiB, then resets mid-stream
(`x-upstream-fail: reset-mid-stream`, after its last event; whatever aiohttp held when the reset landed is read
past it by relay.unread()). The app must get the whole event, the record must be the broken stream's
(truncated, upstream_failed, estimated), and /metrics must count the one unread event. The same event in a
stream that completes is counted too, and its provider usage still read from the events after it.

Driven by the openai SDK (chat stream, usage chunk injected by the sidecar) against the test upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.usage import Outcome, UsageSource
from tokenbudget_sidecar.sse import MAX_EVENT_BYTES
from tokenbudget_testing.upstream.tokens import answer_words

BIG = 4_000_000  # one-token words in one delta: ~18.4 MiB of JSON, past the 16 MiB cap
TEXT = "".join(answer_words(BIG))
assert len(TEXT.encode()) > MAX_EVENT_BYTES


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack() as st:
        yield st


@pytest.fixture(autouse=True)
def _clean(s: Stack) -> None:
    s.reset()


def unread_events(s: Stack) -> float:
    for line in http_get(f"{s.admin}/metrics").splitlines():
        if line.startswith('tokenbudget_stream_unread_events_total{provider="openai"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def chat(s: Stack, headers: dict[str, str]) -> tuple[list[str], Exception | None]:
    """The deltas the app got, and what its SDK raised (None when the stream ended cleanly)."""
    client = openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0, timeout=120)
    deltas: list[str] = []
    try:
        with client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                            stream=True, extra_headers=headers) as stream:
            for chunk in stream:  # one by one: what arrived before the failure is kept
                if chunk.choices:
                    deltas.append(chunk.choices[0].delta.content or "")
    except (openai.APIError, ConnectionError) as exc:  # the reset reaches the app as its SDK's error
        return deltas, exc
    return deltas, None


def test_an_event_past_the_cap_then_a_reset_is_relayed_whole_recorded_broken_and_counted_unread(s: Stack) -> None:
    before = unread_events(s)
    # Two content deltas (BIG tokens, then 1): reset-mid-stream strikes before the second, after the big one.
    deltas, failed = chat(s, {"x-upstream-output-tokens": str(BIG + 1), "x-upstream-chunk-tokens": str(BIG),
                              "x-upstream-fail": "reset-mid-stream"})
    assert failed is not None, "the app's stream breaks as the provider's did"
    assert TEXT in deltas, "the event too large to read still reached the app whole"
    (rec,) = s.records(1)
    assert rec.outcome is Outcome.UPSTREAM_FAILED
    assert rec.truncated
    assert rec.source is UsageSource.ESTIMATED
    (served,) = s.ledger.wait_finished(1)
    assert not served.usage_sent
    assert unread_events(s) == before + 1


def test_an_event_past_the_cap_in_a_stream_that_completes_is_counted_and_the_usage_after_it_read(s: Stack) -> None:
    before = unread_events(s)
    deltas, failed = chat(s, {"x-upstream-output-tokens": str(BIG), "x-upstream-chunk-tokens": str(BIG)})
    assert failed is None
    assert TEXT in deltas
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert rec.source is UsageSource.PROVIDER, "the usage chunk after it is read as usual"
    assert rec.usage.output_tokens == served.output_tokens == BIG
    assert unread_events(s) == before + 1
