"""SSE keep-alives (comment blocks such as `: keep-alive`) reach the app, whichever way a stream is relayed.

Servers and gateways send comment-only blocks on idle streams so that clients and intermediaries (load balancers
with idle timeouts) keep the connection open; a proxy must pass them on. The sidecar relays most streams chunk
by chunk as read, but an OpenAI chat stream whose usage chunk it asked for on the app's behalf is relayed event
by event (relay.py), so that chunk can be hidden: the comment blocks between events must survive that too
(sse.py hands them back as events with nothing to read).

The test upstream sends `: keep-alive` and a blank line before each event under `x-upstream-keepalive: true`;
the app's side is read raw (urllib), since the SDKs skip comments.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, stack

from tokenbudget_testing.upstream import H_KEEPALIVE

KEEPALIVE = b": keep-alive\n\n"
HEADERS = {H_KEEPALIVE: "true", "x-upstream-output-tokens": "5", "authorization": "Bearer sk-test"}
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack() as st:
        yield st


def raw_stream(url: str, body: dict[str, Any]) -> bytes:
    """The stream's bytes as the app's side receives them (chunked transfer decoded, nothing else)."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **HEADERS})
    with urllib.request.urlopen(req, timeout=30) as resp:  # loopback only
        assert resp.status == 200
        return bytes(resp.read())


CASES = {
    # the sidecar asks for the usage chunk and hides it: relayed event by event
    "chat, usage injected": ("/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "stream": True}, 1),
    # the app asked for usage itself: relayed as read
    "chat, usage asked by the app": ("/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "stream": True,
                                                           "stream_options": {"include_usage": True}}, 0),
    "responses": ("/responses", {"model": "gpt-4o", "input": "Hi", "stream": True}, 0),
}


@pytest.mark.parametrize(("path", "body", "hidden"), CASES.values(), ids=CASES.keys())
def test_every_keepalive_the_upstream_sends_reaches_the_app(s: Stack, path: str, body: dict[str, Any],
                                                            hidden: int) -> None:
    got = raw_stream(s.openai_url + path, body)
    blocks = [b for b in got.split(b"\n\n") if b]  # the upstream ends its lines with \n
    keepalives = blocks.count(KEEPALIVE.rstrip())
    events = len(blocks) - keepalives
    assert events > 1
    assert keepalives == events + hidden, got[:2000]  # one before each event, the hidden one's too
    if hidden:
        assert b'"usage":{' not in got, "the usage chunk the app did not ask for is still hidden"


def test_the_sdk_reads_a_stream_with_keepalives_as_usual(s: Stack) -> None:
    client = openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
                                                 stream=True, extra_headers=HEADERS))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks)
