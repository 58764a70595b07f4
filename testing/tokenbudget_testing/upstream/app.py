"""The aiohttp application, its generic request flow, and helpers to run it.

Routes are the providers' native paths relative to each provider's base URL, so one server can stand
in for all three at once: OpenAI clients use ``{url}/v1``, Anthropic and Gemini clients use ``{url}``.
``GET /v1/models`` answers in Anthropic's shape when the request carries ``anthropic-version`` and in
OpenAI's otherwise; model listing is not recorded in the ledger (it bills nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from . import (
    anthropic_dialect,
    gemini_dialect,
    media_routes,
    more_routes,
    openai_dialect,
    openai_responses,
    responses_background,
    ws_gemini,
    ws_openai,
    ws_sessions,
)
from .behaviour import STATUS_FAILURES, ControlError, parse_controls
from .call import Call, UpstreamError
from .dialect import DialectSpec, Handler
from .ledger import Ledger
from .settings import UpstreamSettings
from .tokens import CHAT_ENCODING, EMBEDDING_ENCODING, encoding

SETTINGS = web.AppKey("tokenbudget_testing.upstream.settings", UpstreamSettings)
LEDGER = web.AppKey("tokenbudget_testing.upstream.ledger", Ledger)


async def _read_form(request: web.Request) -> tuple[Any, str | None, int]:
    """A multipart form as a dict: text fields as strings, files as {filename, bytes, sha256} (a name sent
    more than once, such as ``image[]``, as a list)."""
    form = await request.post()
    body: dict[str, Any] = {}
    for name, value in form.items():
        item: Any = value
        if isinstance(value, web.FileField):
            data = value.file.read()
            item = {"filename": value.filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if name in body:
            body[name] = [*(body[name] if isinstance(body[name], list) else [body[name]]), item]
        else:
            body[name] = [item] if name.endswith("[]") else item
    return body, None, request.content_length or 0


async def _read_json(request: web.Request) -> tuple[Any, str | None, int]:
    """(parsed body, error message, size in bytes); the body is None when it is missing or not JSON."""
    if request.content_type == "multipart/form-data":
        return await _read_form(request)
    raw = await request.read()
    if not raw:
        return None, "We could not parse the JSON body of your request: the body is empty.", 0
    try:
        return json.loads(raw), None, len(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"We could not parse the JSON body of your request ({exc.__class__.__name__}).", len(raw)


async def _send_error(call: Call, spec: DialectSpec, error: UpstreamError) -> web.StreamResponse:
    status, body, headers = spec.render_error(call, error)
    call.success_headers = {}
    return await call.send_json(body, status=status, headers=headers, indent=spec.error_indent)


async def _respond(
    call: Call, spec: DialectSpec, handler: Handler, body: Any, parse_error: str | None
) -> web.StreamResponse:
    """Apply the control headers' HTTP-level failures, then let the dialect answer (or refuse)."""
    try:
        try:
            call.controls = parse_controls(call.request.headers, call.settings)
        except ControlError as exc:
            call.note(failure="bad-control-header")
            return await _send_error(call, spec, UpstreamError(400, str(exc)))
        fail = call.controls.fail
        if fail is not None:
            call.note(failure=fail)
        if fail == "reset-before-headers":
            return call.reset()
        if fail in STATUS_FAILURES:
            return await _send_error(call, spec, UpstreamError(int(fail)))
        if fail == "in-stream-error" and not call.record.stream:
            return await _send_error(call, spec, UpstreamError(spec.in_stream_error_status))
        if parse_error is not None:
            raise UpstreamError(400, parse_error)
        return await handler(call, body)
    except UpstreamError as exc:
        if call.record.failure is None:
            call.note(failure="invalid-request" if exc.status == 400 else str(exc.status))
        return await _send_error(call, spec, exc)


def route(spec: DialectSpec, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Wrap a dialect handler in the generic flow (ledger record, controls, injected failures)."""

    async def serve_call(request: web.Request) -> web.StreamResponse:
        settings = request.app[SETTINGS]
        ledger = request.app[LEDGER]
        body, parse_error, size = await _read_json(request)
        request_id = spec.new_id()
        record = ledger.start(
            request_id=request_id,
            dialect=spec.dialect,
            endpoint=request.path,
            model=spec.model_of(request, body),
            stream=spec.stream_of(request, body),
            request_headers={k.lower(): v for k, v in request.headers.items()},
            request_query=dict(request.query),
            request_body=body,
        )
        call = Call(
            request=request,
            settings=settings,
            ledger=ledger,
            record=record,
            request_id=request_id,
            success_headers=spec.success_headers(request_id),
            body_bytes=size,
        )
        try:
            return await _respond(call, spec, handler, body, parse_error)
        except ConnectionError:
            # The client went away (or the transport broke) while we were writing.
            call.note(completed=False)
            return call.response or web.Response(status=499)
        except asyncio.CancelledError:
            call.note(completed=False)
            raise
        finally:
            call.note(finished=True, finished_at=time.time(), emitted_output_tokens=call.emitted)

    return serve_call


async def _gemini(request: web.Request) -> web.StreamResponse:
    """Dispatch ``models/{model}:{method}`` (aiohttp cannot route on the part after the colon)."""
    model, method = gemini_dialect.split_target(request)
    if method in ("generateContent", "streamGenerateContent"):
        return await _GEMINI_GENERATE(request)
    if method == "countTokens":
        return await _GEMINI_COUNT(request)
    if method == "embedContent":
        return await _GEMINI_EMBED(request)
    if method == "batchEmbedContents":
        return await _GEMINI_BATCH_EMBED(request)
    body = {
        "error": {"code": 404, "message": f"Method not found: {method or '(none)'} for {model}", "status": "NOT_FOUND"}
    }
    return web.json_response(body, status=404)


_GEMINI_GENERATE = route(gemini_dialect.SPEC, gemini_dialect.generate)
_GEMINI_COUNT = route(gemini_dialect.SPEC, gemini_dialect.count_tokens)
_GEMINI_EMBED = route(gemini_dialect.SPEC, lambda call, raw: more_routes.embed(call, raw, batch=False))
_GEMINI_BATCH_EMBED = route(gemini_dialect.SPEC, lambda call, raw: more_routes.embed(call, raw, batch=True))


async def _models(request: web.Request) -> web.Response:
    models = request.app[SETTINGS].models
    if "anthropic-version" in request.headers:
        return web.json_response(anthropic_dialect.models_payload(models))
    return web.json_response(openai_dialect.models_payload(models))


async def _served(request: web.Request) -> web.Response:
    """``GET /_upstream/served``: the ledger as JSON (for tests that run the upstream as a process)."""
    records = request.app[LEDGER].records
    return web.json_response([r.model_dump(mode="json") for r in records])


async def _clear(request: web.Request) -> web.Response:
    """``DELETE /_upstream/served``: forget the ledger."""
    request.app[LEDGER].clear()
    return web.Response(status=204)


async def _warm_tokenizers(_app: web.Application) -> None:
    """Load the BPE tables at start-up, so the first call's latency is not a tokenizer load (~0.2 s)."""
    for name in (CHAT_ENCODING, EMBEDDING_ENCODING):
        await asyncio.to_thread(encoding, name)


def create_app(settings: UpstreamSettings | None = None) -> web.Application:
    """The test upstream as an aiohttp application (its ledger is ``app[LEDGER]``)."""
    settings = settings or UpstreamSettings()
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[LEDGER] = Ledger()
    app[responses_background.STORE] = {}
    app[ws_sessions.WS_SESSIONS] = []
    app.on_startup.append(_warm_tokenizers)
    add = app.router.add_route
    add("POST", "/v1/chat/completions", route(openai_dialect.CHAT, openai_dialect.chat_completions))
    add("POST", "/v1/responses", route(openai_dialect.RESPONSES, openai_responses.responses))
    add("GET", "/v1/responses/{response_id}", responses_background.retrieve)
    add("POST", "/v1/responses/{response_id}/cancel", responses_background.cancel)
    add("POST", "/v1/embeddings", route(openai_dialect.EMBEDDINGS, openai_dialect.embeddings))
    add("GET", "/v1/models", _models)
    add("POST", "/v1/messages", route(anthropic_dialect.SPEC, anthropic_dialect.messages))
    add("POST", "/v1/messages/count_tokens", route(anthropic_dialect.SPEC, anthropic_dialect.count_tokens))
    add("POST", "/v1beta/models/{target}", _gemini)
    add("POST", "/v1/models/{target}", _gemini)
    add("POST", "/v1/completions", route(openai_dialect.COMPLETIONS, more_routes.completions))
    add("POST", "/v1/moderations", more_routes.moderations)
    add("POST", "/v1/files", more_routes.files)
    add("POST", "/v1/batches", more_routes.batches)
    add("POST", "/v1/images/generations",
        route(openai_dialect.IMAGES, lambda call, raw: media_routes.images(call, raw, edit=False)))
    add("POST", "/v1/images/edits",
        route(openai_dialect.IMAGES, lambda call, raw: media_routes.images(call, raw, edit=True)))
    add("POST", "/v1/audio/transcriptions", route(openai_dialect.TRANSCRIPTIONS, media_routes.transcriptions))
    add("POST", "/v1/audio/speech", route(openai_dialect.SPEECH, media_routes.speech))
    add("POST", "/v1/messages/batches", more_routes.message_batches)
    # Azure OpenAI: the same formats under /openai/deployments/{deployment}/... (?api-version=, api-key header)
    add("POST", "/openai/deployments/{deployment}/chat/completions",
        route(openai_dialect.CHAT, openai_dialect.chat_completions))
    add("POST", "/openai/deployments/{deployment}/completions",
        route(openai_dialect.COMPLETIONS, more_routes.completions))
    add("POST", "/openai/deployments/{deployment}/embeddings",
        route(openai_dialect.EMBEDDINGS, openai_dialect.embeddings))
    azure_images = route(openai_dialect.IMAGES, lambda call, raw: media_routes.images(call, raw, edit=False))
    add("POST", "/openai/deployments/{deployment}/images/generations", azure_images)
    add("POST", "/openai/images/generations", azure_images)  # the SDK's path when the call names no model
    # WebSocket sessions (ws_sessions.py; ws_openai.py: Realtime, Responses; ws_gemini.py: Live)
    add("GET", "/v1/realtime", ws_openai.realtime)
    add("GET", "/v1/responses", ws_openai.responses)
    add("GET", "/ws/{service}", ws_gemini.live)
    add("GET", "/_upstream/served", _served)
    add("DELETE", "/_upstream/served", _clear)
    add("*", "/{tail:.*}", more_routes.not_found)  # last: any other path, as the providers answer it
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def serve(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    app: web.Application | None = None,
    settings: UpstreamSettings | None = None,
) -> AsyncIterator[str]:
    """Run the upstream on the current event loop; yields its base URL (port 0 picks a free port).

    Pass your own ``app = create_app()`` to reach its ledger as ``app[LEDGER]``. On exit, calls still
    in flight get about twice ``settings.shutdown_timeout_s`` to finish and are then cut off (recorded
    as not completed).
    """
    app = app if app is not None else create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=app[SETTINGS].shutdown_timeout_s, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield _url(host, bound_port)
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def serve_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    app: web.Application | None = None,
    settings: UpstreamSettings | None = None,
) -> Iterator[str]:
    """Run the upstream on its own event loop in a daemon thread; yields its base URL.

    For synchronous SDK clients (which would block a shared loop) and for benchmarks that must not
    share a loop with the code under test. The ledger is thread-safe.
    """
    ready: list[str] = []
    failure: list[BaseException] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with serve(host, port, app=app, settings=settings) as url:
                ready.append(url)
                started.set()
                await stop.wait()
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="testupstream", daemon=True)
    thread.start()
    started.wait(30)
    if failure or not ready:
        thread.join(5)
        raise RuntimeError("test upstream failed to start") from (failure[0] if failure else None)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
