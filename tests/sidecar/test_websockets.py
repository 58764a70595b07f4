"""WebSocket sessions through the sidecar (websocket.py): the SDK methods that open one work as they did before
injection, every usage report in a session is one record equal to what the provider reported, budgets refuse at
connect in the provider's shape, and closes, drops, pings and binary frames pass through both ways.

Driven by the official SDKs (openai `realtime.connect`, `responses.connect`, google-genai `aio.live.connect`) and,
for frame-level facts, by an aiohttp client, against the test upstream's WebSocket endpoints (ws_sessions.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import genai_prices
import openai
import pytest
import websockets.exceptions
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.usage import Outcome, UsageSource
from tokenbudget_operator.injector import certs
from tokenbudget_sidecar.settings import Settings
from tokenbudget_testing.upstream.ws_sessions import WS_SESSIONS

USER_ITEM: Any = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello"}]}


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    certs.write_material(certs.generate(["127.0.0.1"]), directory)
    return directory


@pytest.fixture(scope="module")
def plain() -> Iterator[Stack]:
    with stack() as st:
        yield st


@pytest.fixture(scope="module")
def tls(tls_dir: Path) -> Iterator[Stack]:
    """The data port on TLS: google-genai's live.connect dials wss:// whatever the base URL's scheme says."""
    settings = Settings(data_port=0, admin_port=0, data_tls_cert_file=tls_dir / certs.CERT_FILE,
                        data_tls_key_file=tls_dir / certs.KEY_FILE)
    with stack(settings) as st:
        yield st


@pytest.fixture
def s(plain: Stack) -> Stack:
    plain.reset()
    upstream_sessions(plain).clear()
    return plain


@pytest.fixture
def g(tls: Stack) -> Stack:
    tls.reset()
    upstream_sessions(tls).clear()
    return tls


def upstream_sessions(s: Stack) -> list[dict[str, Any]]:
    """How each session ended at the upstream: the close code and reason it got, its handshake's headers."""
    assert s.upstream_app is not None
    return s.upstream_app[WS_SESSIONS]


def client_tls(tls_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_dir / certs.CA_FILE))


def oa(s: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)


async def realtime_turn(conn: Any) -> Any:
    await conn.conversation.item.create(item=USER_ITEM)
    await conn.response.create()
    async for event in conn:
        if event.type == "response.done":
            return event.response
    raise AssertionError("no response.done")


async def test_realtime_sessions_record_each_response_as_the_provider_reported_it(s: Stack) -> None:
    headers = {"x-upstream-output-tokens": "5", "x-upstream-audio-tokens": "40", "x-upstream-cached-tokens": "4"}
    async with oa(s).realtime.connect(model="gpt-realtime", extra_headers=headers) as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        first = await realtime_turn(conn)
        second = await realtime_turn(conn)
    assert first.usage.input_tokens < second.usage.input_tokens, "the second turn's input carries the first"
    records = await asyncio.to_thread(s.records, 2)
    served = s.ledger.find(lambda r: r.dialect == "openai-realtime")
    assert [r.response_id for r in records] == [r.request_id for r in served] == [first.id, second.id]
    for rec, up in zip(records, served, strict=True):
        assert (rec.operation, rec.model, rec.source) == ("realtime", "gpt-realtime", UsageSource.PROVIDER)
        assert (rec.usage.input_tokens, rec.usage.cached_input_tokens, rec.usage.output_tokens,
                rec.usage.output_audio_tokens) == (up.input_tokens, up.cached_input_tokens, up.output_tokens,
                                                   up.output_audio_tokens)
        expected = genai_prices.calc_price(genai_prices.Usage(
            input_tokens=up.input_tokens, cache_read_tokens=up.cached_input_tokens, output_tokens=up.output_tokens,
            output_audio_tokens=up.output_audio_tokens), "gpt-realtime", provider_id="openai").total_price
        assert rec.cost_usd == expected, "audio output priced at its audio rate"
    assert len(s.state.usage_log.all()) == 2, "the session itself adds no record beside its responses"


@pytest.mark.parametrize(("model", "billed"), [("gpt-4o-transcribe", "tokens"), ("whisper-1", "seconds")])
async def test_realtime_input_audio_transcription_is_a_record_of_its_own_at_its_models_rates(
        s: Stack, model: str, billed: str) -> None:
    async with oa(s).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"transcription": {"model": model}}}})
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\0" * 48000 * 2).decode())  # 2 s of pcm16
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                break
    transcribed, answered = await asyncio.to_thread(s.records, 2)
    served_transcription, served_response = s.ledger.find(lambda r: r.dialect == "openai-realtime")
    assert (transcribed.operation, transcribed.model) == ("transcriptions", model)
    assert transcribed.response_id == served_transcription.request_id
    if billed == "tokens":
        assert (transcribed.usage.input_audio_tokens, transcribed.usage.output_tokens) == (20, 2)
    else:
        assert (transcribed.usage.audio_seconds, transcribed.usage.total_tokens) == (2.0, 0)
    assert transcribed.cost_usd is not None
    assert transcribed.cost_usd > 0
    assert (answered.operation, answered.model) == ("realtime", "gpt-realtime")
    assert answered.usage.input_audio_tokens == served_response.input_audio_tokens == 20, "the audio is context too"


async def test_responses_over_a_websocket_are_metered_per_completed_response(s: Stack) -> None:
    async with oa(s).responses.connect(extra_headers={"x-upstream-output-tokens": "6"}) as conn:
        for _ in range(2):
            await conn.response.create(model="gpt-4o-mini", input="Say hello")
            async for event in conn:
                if event.type == "response.completed":
                    break
    records = await asyncio.to_thread(s.records, 2)
    served = s.ledger.find(lambda r: r.dialect == "openai-responses-ws")
    assert [(r.model, r.operation, r.usage.input_tokens, r.usage.output_tokens, r.response_id) for r in records] == [
        ("gpt-4o-mini", "responses", u.input_tokens, u.output_tokens, u.request_id) for u in served]
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in records)


def live_client(s: Stack, tls_dir: Path, **headers: str) -> genai.Client:
    return genai.Client(api_key="k", http_options=gtypes.HttpOptions(
        base_url=s.gemini_url, async_client_args={"ssl": client_tls(tls_dir)}, headers=headers))


async def test_gemini_live_turns_are_metered_with_their_audio(g: Stack, tls_dir: Path) -> None:
    s = g
    client = live_client(s, tls_dir, **{"x-upstream-output-tokens": "4", "x-upstream-audio-tokens": "30",
                                        "x-upstream-input-audio-tokens": "12"})
    usages = []
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview",
                                       config={"response_modalities": ["AUDIO"]}) as session:
        for text in ("Hello", "And again"):
            await session.send_client_content(turns={"role": "user", "parts": [{"text": text}]}, turn_complete=True)
            async for msg in session.receive():
                if msg.usage_metadata is not None:
                    usages.append(msg.usage_metadata)
    records = await asyncio.to_thread(s.records, 2)
    served = s.ledger.find(lambda r: r.dialect == "gemini-live")
    assert len(records) == len(served) == len(usages) == 2
    for rec, up, wire in zip(records, served, usages, strict=True):
        assert (rec.operation, rec.model) == ("live", "gemini-live-2.5-flash-preview")
        assert (rec.usage.input_tokens, rec.usage.input_audio_tokens, rec.usage.output_tokens,
                rec.usage.output_audio_tokens) == (up.input_tokens, up.input_audio_tokens, up.output_tokens,
                                                   up.output_audio_tokens) == (
            wire.prompt_token_count, 12, wire.response_token_count, 30)
        expected = genai_prices.calc_price(genai_prices.Usage(
            input_tokens=up.input_tokens, input_audio_tokens=12, output_tokens=up.output_tokens,
            output_audio_tokens=30), "gemini-live-2.5-flash-preview", provider_id="google").total_price
        assert rec.cost_usd == expected


async def test_a_session_that_reports_nothing_is_recorded_once_as_unmetered(s: Stack) -> None:
    before = unmetered_count(s, "WS /v1/realtime")
    async with oa(s).realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "Wait."})
        async for event in conn:
            if event.type == "session.updated":
                break
        assert metric(s, 'tokenbudget_websocket_sessions{provider="openai"}') == 1
    await wait_for(lambda: metric(s, 'tokenbudget_websocket_sessions{provider="openai"}') == 0)
    (rec,) = await asyncio.to_thread(s.records, 1)
    assert (rec.source, rec.route, rec.status, rec.usage.total_tokens) == (
        UsageSource.UNMETERED, "WS /v1/realtime", 101, 0)
    assert unmetered_count(s, "WS /v1/realtime") == before + 1


def metric(s: Stack, series: str) -> float:
    for line in http_get(f"{s.admin}/metrics").splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def unmetered_count(s: Stack, route: str) -> float:
    """tokenbudget_unmetered_calls_total of `route`, summed over outcomes (this stack's registry)."""
    for line in http_get(f"{s.admin}/metrics").splitlines():
        if line.startswith("tokenbudget_unmetered_calls_total{") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def blocking_budget(spec: dict[str, Any]) -> dict[str, Any]:
    return {"budgets": [{"namespace": "default", "name": "team", "spec": {"selector": {}, **spec}}]}


def test_a_spent_budget_refuses_the_upgrade_with_429_and_retry_after_in_openais_shape(tls_dir: Path) -> None:
    spec = {"limits": [{"name": "hour", "period": "Hour", "tokens": 20}]}
    with stack(**blocking_budget(spec)) as st:
        async def session() -> Any:
            client = openai.AsyncOpenAI(base_url=st.openai_url, api_key="k", max_retries=0)
            async with client.realtime.connect(model="gpt-realtime",
                                               extra_headers={"x-upstream-output-tokens": "30"}) as conn:
                return await realtime_turn(conn)

        first = asyncio.run(session())
        assert first.usage.total_tokens > 20, "one response overran the limit: nothing is held per response"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            asyncio.run(session())
        response = refused.value.response
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        error = json.loads(bytes(response.body))["error"]  # OpenAI's error shape, as its HTTP 429s have it
        assert error["code"] == "rate_limit_exceeded"
        assert error["message"].startswith("tokenbudget: budget default/team limit hour has 0 tokens left of 20")
        billed, refusal = st.records(2)
        assert (billed.budgets, billed.usage.total_tokens) == (["default/team"], first.usage.total_tokens)
        assert (refusal.outcome, refusal.status, refusal.source) == (Outcome.REFUSED, 429, UsageSource.NONE)
        assert len(st.ledger.find(lambda r: r.dialect == "openai-realtime")) == 1, "the refused session never left"


def test_deny_refuses_an_unmetered_websocket_route_before_the_upgrade() -> None:
    spec = {"unmeteredRoutes": "Deny"}
    with stack(**blocking_budget(spec)) as st:
        async def translate() -> None:
            client = openai.AsyncOpenAI(base_url=st.openai_url, api_key="k", max_retries=0)
            async with client.realtime.translations.connect(model="gpt-realtime-translate"):
                pass

        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            asyncio.run(translate())
        assert refused.value.response.status_code == 403
        assert b"WS /v1/realtime/translations is a route whose answers report no usage" in refused.value.response.body
        (rec,) = st.records(1)
        assert (rec.outcome, rec.decisions) == (Outcome.REFUSED, ["default/team:DenyUnmetered"])


async def test_close_codes_and_reasons_pass_both_ways(s: Stack) -> None:
    async with oa(s).realtime.connect(model="gpt-realtime") as conn:
        await conn.close(code=4001, reason="app is done")
    # an earlier test's session may end at the upstream after the fixture cleared the list: look for this one
    def seen() -> str:
        return f"the upstream saw {[(e['close_code'], e['close_reason']) for e in upstream_sessions(s)]}"

    await wait_for(lambda: any(e["close_code"] == 4001 for e in upstream_sessions(s)), why=seen)
    (ended,) = [e for e in upstream_sessions(s) if e["close_code"] == 4001]
    assert ended["close_reason"] == "app is done"
    (app_closed,) = await asyncio.to_thread(s.records, 1)
    assert app_closed.outcome is Outcome.OK, "closing is how a session ends, not a failure"

    url = s.openai_url.replace("http", "ws") + "/realtime?model=gpt-realtime"
    async with aiohttp.ClientSession() as http, http.ws_connect(
            url, headers={"x-upstream-ws-close": "4002 over and out"}) as ws:
        await ws.send_json({"type": "response.create"})
        while (msg := await ws.receive()).type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            pass
        assert (msg.type, ws.close_code, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4002, "over and out")
    _, billed = await asyncio.to_thread(s.records, 2)
    assert billed.source is UsageSource.PROVIDER, "the response before the close is the session's one record"


async def test_pings_and_binary_frames_are_relayed_as_they_are(g: Stack, tls_dir: Path) -> None:
    url = g.gemini_url.replace("https", "wss") + "/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
        "BidiGenerateContent"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, ssl=client_tls(tls_dir), autoping=False) as ws:
        await ws.ping(b"are you there")
        pong = await ws.receive(timeout=5)
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
        await ws.send_json({"setup": {"model": "models/gemini-live-2.5-flash-preview"}})
        setup = await ws.receive(timeout=5)
        assert (setup.type, setup.data) == (aiohttp.WSMsgType.BINARY, b'{"setupComplete": {}}')


@pytest.mark.parametrize("kind", ["realtime", "live"])
async def test_an_upstream_that_drops_mid_session_drops_the_app_and_records_what_was_reported(
        plain: Stack, tls: Stack, tls_dir: Path, kind: str) -> None:
    s = plain if kind == "realtime" else tls
    s.reset()
    fail = {"x-upstream-fail": "reset-mid-stream", "x-upstream-output-tokens": "20"}

    async def realtime() -> None:
        async with oa(s).realtime.connect(model="gpt-realtime", extra_headers=fail) as conn:
            await realtime_turn(conn)

    async def live() -> None:
        async with live_client(s, tls_dir, **fail).aio.live.connect(model="gemini-live-2.5-flash-preview") as ses:
            await ses.send_client_content(turns={"role": "user", "parts": [{"text": "Hi"}]}, turn_complete=True)
            async for _ in ses.receive():
                pass

    if kind == "realtime":
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as dropped:
            await realtime()
        assert dropped.value.rcvd is None, "no close frame: the app sees the drop the provider made"
    else:
        with pytest.raises(genai_errors.APIError) as failed:
            await live()
        assert failed.value.code == 1006
    (rec,) = await asyncio.to_thread(s.records, 1)
    (served,) = s.ledger.find(lambda r: not r.completed)
    assert not served.usage_sent, "the provider reported nothing before it dropped"
    assert (rec.outcome, rec.source, rec.usage.total_tokens) == (Outcome.UPSTREAM_FAILED, UsageSource.UNMETERED, 0)


def test_the_sidecars_key_replaces_the_apps_on_the_upgrade(tmp_path: Path) -> None:
    for name in ("openai", "gemini"):
        (tmp_path / name).write_text(f"{name}-key-held-by-the-sidecar\n")
    with stack(key_files={"openai": tmp_path / "openai", "gemini": tmp_path / "gemini"}) as st:
        async def connect() -> None:
            client = openai.AsyncOpenAI(base_url=st.openai_url, api_key="placeholder", max_retries=0)
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await conn.close()
            async with aiohttp.ClientSession() as http:  # a browser's key subprotocol, Gemini's key= query
                url = st.openai_url.replace("http", "ws") + "/realtime?model=gpt-realtime"
                async with http.ws_connect(url, protocols=("realtime", "openai-insecure-api-key.app-key")) as ws:
                    await ws.receive(timeout=5)
                live = st.gemini_url.replace("http", "ws") + "/ws/google.ai.generativelanguage.v1beta." \
                    "GenerativeService.BidiGenerateContent?key=app-key"
                async with http.ws_connect(live) as ws:
                    await ws.send_json({"setup": {"model": "models/gemini-live-2.5-flash-preview"}})
                    await ws.receive(timeout=5)
            await wait_for(lambda: len(upstream_sessions(st)) == 3)  # the upstream notes each end just after

        asyncio.run(connect())
        sdk, browser, gemini = sorted(upstream_sessions(st), key=lambda e: (e["path"], "sec-websocket-protocol"
                                                                            in e["headers"]))
        assert sdk["headers"]["authorization"] == browser["headers"]["authorization"] == (
            "Bearer openai-key-held-by-the-sidecar")
        assert browser["headers"]["sec-websocket-protocol"] == "realtime", "the app's key left with its subprotocol"
        assert gemini["headers"]["x-goog-api-key"] == "gemini-key-held-by-the-sidecar"
        assert "key" not in gemini["query"]


async def test_an_upgrade_stays_under_its_upstreams_base_url(s: Stack) -> None:
    url = s.sidecar.replace("http", "ws") + "/openai/v1/..%2f..%2fadmin"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
    assert refused.value.status == 400
    assert not upstream_sessions(s), "nothing reached the provider"


async def test_a_message_over_the_size_cap_closes_both_sides_with_1009(tls_dir: Path) -> None:
    settings = Settings(data_port=0, admin_port=0, max_body_bytes=4096)
    with stack(settings) as st:
        url = st.openai_url.replace("http", "ws") + "/realtime?model=gpt-realtime"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.receive(timeout=5)  # session.created
            await ws.send_str('{"type": "conversation.item.create", "pad": "' + "x" * 8192 + '"}')
            msg = await ws.receive(timeout=5)
            assert (msg.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1009)
        await wait_for(lambda: len(upstream_sessions(st)) == 1)
        assert upstream_sessions(st)[0]["close_code"] == 1009


async def wait_for(condition: Any, within: float = 5.0, why: Any = None) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met in time{': ' + why() if why else ''}")
