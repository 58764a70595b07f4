"""Routes past chat/responses/messages/generate that apps reach through an injected sidecar.

Wire facts (docs/wire-formats.md in the repo has the sources):

- OpenAI legacy ``POST /v1/completions``: ``prompt`` (string or list), ``max_tokens`` (default 16);
  answer ``object: text_completion`` with ``choices[].text`` and ``usage`` as Chat's
  (``prompt_tokens`` / ``completion_tokens``); streams are SSE chunks of the same object, with the
  usage-only last chunk (``choices: []``) when ``stream_options.include_usage`` is set, then ``[DONE]``.
- OpenAI ``POST /v1/moderations``: free; ``results[]`` of flags and scores, no usage.
- OpenAI ``POST /v1/files`` (multipart: ``file``, ``purpose``) answers a file object whose ``bytes`` is the
  uploaded size; ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``) answers a
  batch object. Neither reports usage: the batch is billed when it runs.
- Anthropic ``POST /v1/messages/batches`` (``requests[]`` of ``custom_id`` + ``params``) answers a
  ``message_batch`` with ``processing_status: in_progress`` and ``request_counts``; no usage.
- Gemini ``models/{model}:embedContent`` (``content``) answers ``{"embedding": {"values": [...]}}``;
  ``:batchEmbedContents`` (``requests[]``, each with its own ``model`` and ``content``) answers
  ``{"embeddings": [{"values": [...]}, ...]}``; neither reports token counts.
- Any other path: 404 in the provider's shape (OpenAI ``Invalid URL (METHOD /path)``; Anthropic
  ``not_found_error``; Gemini ``NOT_FOUND``).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from aiohttp import BodyPartReader, web

from . import sse
from .behaviour import make_plan
from .call import Call, Frame, UpstreamError
from .dialect import optional_int, require_object
from .openai_dialect import CHAT, embedding_vector
from .tokens import answer_words, count_embedding_input, count_value, group

LEGACY_DEFAULT_MAX_TOKENS = 16


async def completions(call: Call, raw: Any) -> web.StreamResponse:
    """``POST /v1/completions`` (legacy text completions)."""
    body = require_object(raw)
    model = call.record.model
    if not model:
        raise UpstreamError(400, "you must provide a model parameter")
    prompt = body.get("prompt")
    if not isinstance(prompt, (str, list)):
        raise UpstreamError(400, "Missing required parameter: 'prompt'.", param="prompt")
    cap = optional_int(body, "max_tokens")
    plan = make_plan(call.ctl, counted_prompt=await call.count(lambda: count_value(prompt)),
                     output_cap=LEGACY_DEFAULT_MAX_TOKENS if cap is None else cap, thinking_budget=None)
    finish = "length" if plan.truncated else "stop"
    call.note_plan(plan, finish)
    words = answer_words(plan.visible_tokens)
    usage = None if call.ctl.omit_usage else {
        "prompt_tokens": plan.prompt_tokens, "completion_tokens": plan.output_tokens,
        "total_tokens": plan.prompt_tokens + plan.output_tokens}
    base = {"id": call.request_id, "object": "text_completion", "created": int(time.time()), "model": model}
    if body.get("stream") is not True:
        payload = {**base, "choices": [{"text": "".join(words), "index": 0, "logprobs": None,
                                        "finish_reason": finish}]}
        if usage is not None:
            payload["usage"] = usage
        return await call.send_json(payload, output_tokens=plan.output_tokens,
                                    paced_chunks=plan.chunk_count(call.ctl.chunk_tokens),
                                    usage_sent=usage is not None, indent=2)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def chunk(text: str, reason: str | None) -> bytes:
        return sse.data_event({**base, "choices": [{"text": text, "index": 0, "logprobs": None,
                                                    "finish_reason": reason}]})

    frames = [Frame(chunk(text, None), tokens, paced=True, content=True)
              for text, tokens in group(words, call.ctl.chunk_tokens)]
    frames.append(Frame(chunk("", finish)))
    if include_usage and usage is not None:
        frames.append(Frame(sse.data_event({**base, "choices": [], "usage": usage}), final_usage=True))
    frames.append(Frame(sse.DONE))
    return await call.send_stream(frames, content_type="text/event-stream; charset=utf-8")


async def moderations(request: web.Request) -> web.Response:
    body = await request.json()
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    return web.json_response({"id": "modr-" + uuid.uuid4().hex[:24], "model": "omni-moderation-latest",
                              "results": [{"flagged": False, "categories": {}, "category_scores": {}}
                                          for _ in items]})


async def files(request: web.Request) -> web.Response:
    """Reads the multipart upload as the provider would; ``bytes`` and the sha256 in the id prove the
    body arrived whole."""
    reader = await request.multipart()
    size, digest, purpose, filename = 0, hashlib.sha256(), "", ""
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "file":
            filename = part.filename or ""
            while chunk := await part.read_chunk():
                size += len(chunk)
                digest.update(chunk)
        elif isinstance(part, BodyPartReader) and part.name == "purpose":
            purpose = (await part.read()).decode()
    return web.json_response({"id": "file-" + digest.hexdigest()[:24], "object": "file", "bytes": size,
                              "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                              "status": "processed"})


async def batches(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"id": "batch_" + uuid.uuid4().hex[:24], "object": "batch",
                              "endpoint": body.get("endpoint"), "input_file_id": body.get("input_file_id"),
                              "completion_window": body.get("completion_window"), "status": "validating",
                              "created_at": int(time.time()), "errors": None, "output_file_id": None,
                              "error_file_id": None, "metadata": body.get("metadata"),
                              "request_counts": {"total": 0, "completed": 0, "failed": 0}})


async def message_batches(request: web.Request) -> web.Response:
    body = await request.json()
    count = len(body.get("requests") or [])
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return web.json_response({"id": "msgbatch_" + uuid.uuid4().hex[:24], "type": "message_batch",
                              "processing_status": "in_progress", "created_at": now, "expires_at": now,
                              "ended_at": None, "cancel_initiated_at": None, "archived_at": None,
                              "results_url": None,
                              "request_counts": {"processing": count, "succeeded": 0, "errored": 0,
                                                 "canceled": 0, "expired": 0}})


async def embed(call: Call, raw: Any, batch: bool) -> web.StreamResponse:
    """Gemini ``:embedContent`` / ``:batchEmbedContents``: vectors, no token counts on the wire."""
    body = require_object(raw)
    requests = body.get("requests") if batch else [body]
    if not isinstance(requests, list) or not requests:
        raise UpstreamError(400, "* BatchEmbedContentsRequest.requests: contents is not specified")
    call.note(input_tokens=await call.count(lambda: count_embedding_input([r.get("content") for r in requests])),
              finish_reason=None)
    vectors = [{"values": embedding_vector(repr(r.get("content")), 768)} for r in requests]
    return await call.send_json({"embeddings": vectors} if batch else {"embedding": vectors[0]}, usage_sent=False)


async def not_found(request: web.Request) -> web.Response:
    if "anthropic-version" in request.headers:
        body: dict[str, Any] = {"type": "error", "error": {"type": "not_found_error", "message": "Not Found"}}
    elif request.path.startswith("/v1beta/") or "x-goog-api-key" in request.headers:
        body = {"error": {"code": 404, "message": f"Method not found: {request.path}", "status": "NOT_FOUND"}}
    else:
        body = {"error": {"message": f"Invalid URL ({request.method} {request.path})",
                          "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(body, status=404)


__all__ = ["CHAT", "batches", "completions", "embed", "files", "message_batches", "moderations", "not_found"]
