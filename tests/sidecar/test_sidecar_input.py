"""Bad input, hang-ups and streaming behaviour of the sidecar, driven over raw HTTP on loopback.

Bad input must never reach the provider and never become a 5xx from the sidecar: each case gets a
precise message in the provider's own error shape.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator

import aiohttp
import pytest
from sidecar_harness import Stack, stack

from tokenbudget_api.usage import Disconnect, Outcome, UsageSource
from tokenbudget_sidecar.settings import Settings

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    settings = Settings(data_port=0, admin_port=0, max_body_bytes=64 * 1024)
    with stack(settings) as st:
        yield st


@pytest.fixture(autouse=True)
def _clean(s: Stack) -> None:
    s.reset()


BAD = [
    # (id, path, body bytes, extra headers, status, error shape key path, message fragment)
    ("malformed-json", "/openai/v1/chat/completions", b'{"model": "gpt-4o",', {}, 400,
     ("error", "message"), "not valid JSON"),
    ("json-array", "/openai/v1/chat/completions", b"[1, 2]", {}, 400, ("error", "message"),
     "must be a JSON object, not list"),
    ("invalid-utf8", "/openai/v1/chat/completions", b'{"model": "gpt-4o", "x": "\xff\xfe"}', {}, 400,
     ("error", "message"), "not valid UTF-8"),
    ("missing-model", "/openai/v1/chat/completions", b'{"messages": []}', {}, 400, ("error", "message"),
     "model"),
    ("too-large", "/openai/v1/chat/completions", b'{"model": "gpt-4o", "pad": "' + b"x" * 70_000 + b'"}', {},
     413, ("error", "message"), "exceeds 65536 bytes"),
    ("gzip-body", "/openai/v1/chat/completions", gzip.compress(json.dumps(CHAT).encode()),
     {"content-encoding": "gzip"}, 415, ("error", "message"), "Content-Encoding 'gzip' is not supported"),
    # a route the sidecar does not meter is forwarded: this is the provider's own 404
    ("unknown-route", "/openai/v1/fine_tuning/jobsx", b"{}", {}, 404, ("error", "message"),
     "Invalid URL (POST /v1/fine_tuning/jobsx)"),
    ("unknown-upstream", "/mistral/v1/chat/completions", b"{}", {}, 404, ("error", "message"),
     "no upstream named 'mistral'"),
    ("anthropic-shape", "/anthropic/v1/messages", b"not json", {}, 400, ("error", "message"), "not valid JSON"),
    ("gemini-shape", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", b"[]", {}, 400,
     ("error", "message"), "must be a JSON object"),
]


@pytest.mark.parametrize(("case", "path", "body", "headers", "status", "keys", "fragment"), BAD,
                         ids=[b[0] for b in BAD])
async def test_bad_input_gets_a_clear_error_in_the_providers_shape_and_never_reaches_it(
    s: Stack, case: str, path: str, body: bytes, headers: dict[str, str], status: int,
    keys: tuple[str, str], fragment: str,
) -> None:
    async with aiohttp.ClientSession() as http, http.post(
        s.sidecar + path, data=body, headers={"content-type": "application/json", **headers}
    ) as resp:
        assert resp.status == status
        payload = await resp.json()
    node = payload
    for key in keys:
        node = node[key]
    assert fragment in node
    if path.startswith("/anthropic"):
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "invalid_request_error"
    if path.startswith("/gemini"):
        assert payload["error"]["status"] == "INVALID_ARGUMENT"
        assert payload["error"]["code"] == status
    await asyncio.sleep(0.05)
    assert s.ledger.records == [], "bad input must never reach the provider"


async def _hang_up_after_first_chunk(url: str) -> float:
    body = {**CHAT, "stream": True}
    headers = {"x-upstream-output-tokens": "60", "x-upstream-chunk-delay-ms": "15"}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(url, json=body, headers=headers)
        await resp.content.readany()
        seen = time.time()
        resp.close()  # the app goes away mid-stream
    return seen


@pytest.mark.parametrize("mode", ["Drain", "Cut"])
async def test_a_client_hanging_up_mid_stream_is_drained_or_cut_as_the_policy_says(mode: str) -> None:
    with stack(onDisconnect=mode) as st:
        await _hang_up_after_first_chunk(st.openai_url + "/chat/completions")
        (rec,) = await asyncio.to_thread(st.records, 1)
        (served,) = await st.ledger.wait_finished_async(1)
    assert rec.outcome is Outcome.CLIENT_DISCONNECTED
    assert rec.disconnect is Disconnect(mode)
    if mode == "Drain":
        assert served.completed, "Drain keeps reading the provider to the end"
        assert rec.source is UsageSource.PROVIDER
        assert rec.usage.output_tokens == served.output_tokens == 60
    else:
        assert not served.completed, "Cut closes the upstream connection"
        assert rec.source is UsageSource.ESTIMATED
        assert 0 < rec.usage.output_tokens < 60
        assert abs(rec.usage.output_tokens - served.emitted_output_tokens) <= 2


async def test_stream_bytes_reach_the_app_before_the_provider_has_finished(s: Stack) -> None:
    seen = await _hang_up_after_first_chunk(s.openai_url + "/chat/completions")
    (served,) = await s.ledger.wait_finished_async(1)
    assert served.finished_at is not None
    assert seen < served.finished_at, "the first chunk must be forwarded as it arrives, not at the end"
    await asyncio.to_thread(s.records, 1)


async def test_the_sidecar_answers_many_concurrent_calls_without_a_pool_cap(s: Stack) -> None:
    """aiohttp's default pool of 100 connections would queue the 101st call silently."""
    headers = {"x-upstream-chunk-delay-ms": "500", "x-upstream-output-tokens": "4"}

    async def call(http: aiohttp.ClientSession) -> int:
        async with http.post(s.openai_url + "/chat/completions", json={**CHAT, "stream": True},
                             headers=headers) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        statuses = await asyncio.gather(*(call(http) for _ in range(150)))
    assert statuses == [200] * 150
    served = await s.ledger.wait_finished_async(150, within=20)
    # Every call lasts ~2 s at the upstream; the most calls in flight there at one instant must be all
    # 150 (a pool capped at 100 would hold the rest back until the first ones finished).
    edges = sorted([(r.received_at, 1) for r in served] + [(r.finished_at or 0.0, -1) for r in served])
    in_flight = peak = 0
    for _, delta in edges:
        in_flight += delta
        peak = max(peak, in_flight)
    assert peak == 150
    await asyncio.to_thread(s.records, 150)


async def test_an_upstream_that_goes_silent_gets_a_504_in_the_providers_shape() -> None:
    """Per-phase timeouts: silence longer than the read timeout ends the call; there is no total deadline."""
    settings = Settings(data_port=0, admin_port=0, read_timeout_s=0.3)
    with stack(settings) as st:
        async with aiohttp.ClientSession() as http, http.post(
            st.openai_url + "/chat/completions", json=CHAT,
            headers={"x-upstream-chunk-delay-ms": "1000", "x-upstream-output-tokens": "2"},
        ) as resp:
            assert resp.status == 504
            payload = await resp.json()
        assert "tokenbudget: upstream openai failed: " in payload["error"]["message"]
        (rec,) = await asyncio.to_thread(st.records, 1)
        # a stream whose chunks keep coming within the read timeout runs longer than it, uncut
        async with aiohttp.ClientSession() as http, http.post(
            st.openai_url + "/chat/completions", json={**CHAT, "stream": True},
            headers={"x-upstream-chunk-delay-ms": "100", "x-upstream-output-tokens": "6"},
        ) as resp:
            body = await resp.read()
        assert b"[DONE]" in body
    assert rec.outcome is Outcome.UPSTREAM_FAILED
