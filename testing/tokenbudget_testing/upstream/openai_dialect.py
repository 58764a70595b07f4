"""OpenAI: Chat Completions, Embeddings, the model list, and what Responses shares (docs/wire-formats.md §3-5).

Faithful where a metering proxy can trip: ``prompt_tokens``/``input_tokens`` include cached tokens,
``completion_tokens``/``output_tokens`` include reasoning tokens, a streamed Chat call carries usage
only with ``stream_options.include_usage`` (one extra chunk with ``choices: []`` before
``data: [DONE]``), the Responses stream carries usage only in its terminal ``response.completed`` /
``response.incomplete`` event and has no sentinel, and reasoning is hidden: it costs time (one chunk
delay per chunk of reasoning tokens) and tokens, but sends no text.

``x-upstream-cache-creation-tokens`` appears as ``prompt_tokens_details.cache_write_tokens`` (Chat) and
``input_tokens_details.cache_write_tokens`` (Responses), the 2026 fields.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Any

from aiohttp import web

from . import sse
from .behaviour import Plan, effort_budget, make_plan
from .call import Call, Frame, UpstreamError
from .dialect import (
    DialectSpec,
    ErrorAnswer,
    body_model,
    body_stream,
    format_seconds,
    new_id,
    optional_int,
    require_object,
)
from .tokens import (
    answer_words,
    count_embedding_input,
    count_messages,
    group,
)

SYSTEM_FINGERPRINT = "fp_testupstream"
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-testupstream on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in {delay}. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", "service_unavailable", "The server is overloaded or not ready yet."),
    529: ("server_error", "overloaded", "The engine is currently overloaded, please try again later."),
}


def is_reasoning_model(model: str) -> bool:
    """Models that reject ``max_tokens`` and accept ``reasoning_effort`` (o-series, gpt-5 but not -chat)."""
    name = model.lower()
    if name.startswith("ft:"):
        name = name[3:]
    return name.startswith(_REASONING_PREFIXES) and "-chat" not in name


def go_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* spelling: ``20s``, ``1m30s``, ``250ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:g}s"
    return f"{int(minutes)}m{text}" if minutes else text


def render_error(call: Call, error: UpstreamError) -> ErrorAnswer:
    """``{"error": {message, type, param, code}}`` with Retry-After when the test asked for one."""
    kind, code, message = _ERROR_DEFAULTS.get(error.status, ("server_error", None, "Unexpected error."))
    retry_after = call.controls.retry_after_s if call.controls is not None else None
    delay = format_seconds(retry_after) + "s" if retry_after is not None else "20s"
    text = error.message or message.format(model=call.record.model or "the model", delay=delay)
    body = {
        "error": {
            "message": text,
            "type": error.kind or kind,
            "param": error.param,
            # Injected failures get the status's usual code; validation errors carry their own (or none).
            "code": error.code if error.message is not None else (error.code or code),
        }
    }
    headers = {"x-request-id": call.request_id}
    if retry_after is not None and error.status >= 429:
        headers["retry-after"] = format_seconds(retry_after)
    if error.status == 429:
        headers.update(
            {
                "x-ratelimit-limit-requests": "3",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": go_duration(retry_after if retry_after is not None else 20.0),
            }
        )
    return error.status, body, headers


def _spec(dialect: Any, prefix: str) -> DialectSpec:
    return DialectSpec(
        dialect=dialect,
        new_id=lambda: new_id(prefix),
        render_error=render_error,
        success_headers=lambda rid: {"x-request-id": rid, "openai-processing-ms": "1"},
        model_of=body_model,
        stream_of=body_stream,
        in_stream_error_status=500,
        error_indent=2,
    )


CHAT = _spec("openai-chat", "chatcmpl-")
RESPONSES = _spec("openai-responses", "resp_")
EMBEDDINGS = _spec("openai-embeddings", "emb_")
COMPLETIONS = _spec("openai-completions", "cmpl-")
IMAGES = _spec("openai-images", "img_")
TRANSCRIPTIONS = _spec("openai-transcriptions", "tr_")
SPEECH = _spec("openai-speech", "sp_")


def hidden_reasoning(plan: Plan, per_chunk: int, copies: int = 1) -> list[Frame]:
    """Reasoning costs time and tokens but sends nothing: empty frames that only wait."""
    frames = []
    left = plan.reasoning_tokens
    while left > 0:
        step = min(per_chunk, left)
        frames.append(Frame(b"", output_tokens=step * copies, paced=True, content=True))
        left -= step
    return frames


# --------------------------------------------------------------------------------------------------
# Chat Completions


def _check_chat(body: dict[str, Any], model: str, strict: bool) -> None:
    if not model:
        raise UpstreamError(400, "you must provide a model parameter")
    if not isinstance(body.get("messages"), list):
        raise UpstreamError(
            400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter"
        )
    if not strict:
        return
    if body.get("stream_options") is not None and body.get("stream") is not True:
        raise UpstreamError(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if body.get("max_tokens") is not None and is_reasoning_model(model):
        raise UpstreamError(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    if body.get("reasoning_effort") is not None and not is_reasoning_model(model):
        raise UpstreamError(
            400,
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            param="reasoning_effort",
            code="unsupported_parameter",
        )


def chat_usage(plan: Plan, copies: int) -> dict[str, Any]:
    """A Chat ``usage`` object; ``copies`` = ``n`` choices, each generating the planned tokens."""
    completion = plan.output_tokens * copies
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
        "prompt_tokens_details": {
            "cached_tokens": plan.cached_tokens,
            "cache_write_tokens": plan.cache_creation_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens * copies,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


async def chat_completions(call: Call, raw: Any) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    body = require_object(raw)
    model = call.record.model
    _check_chat(body, model, call.settings.strict_params)
    stream = body.get("stream") is True
    copies = optional_int(body, "n") or 1
    cap = optional_int(body, "max_completion_tokens")
    if cap is None:
        cap = optional_int(body, "max_tokens")
    effort = body.get("reasoning_effort")
    ctl = call.ctl
    plan = make_plan(
        ctl,
        counted_prompt=await call.count(
            lambda: count_messages(body["messages"], [body.get("tools"), body.get("response_format")])
        ),
        output_cap=cap,
        thinking_budget=effort_budget(effort, call.settings),
        thinking_enabled=effort != "none",
    )
    finish = "length" if plan.truncated else "stop"
    call.note_plan(plan, finish, copies)
    words = answer_words(plan.visible_tokens)
    created = int(time.time())
    usage = None if ctl.omit_usage else chat_usage(plan, copies)

    if not stream:
        payload: dict[str, Any] = {
            "id": call.request_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": "".join(words), "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for index in range(copies)
            ],
        }
        if usage is not None:
            payload["usage"] = usage
        payload.update(service_tier="default", system_fingerprint=SYSTEM_FINGERPRINT)
        paced = plan.chunk_count(ctl.chunk_tokens)
        return await call.send_json(
            payload,
            output_tokens=plan.output_tokens * copies,
            paced_chunks=paced,
            usage_sent=usage is not None,
            indent=2,
        )

    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    usage_key = include_usage and usage is not None

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": call.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage_key:
            payload["usage"] = None
        payload.update(extra)
        return sse.data_event(payload)

    def choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    frames = [Frame(chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})])) for i in range(copies)]
    frames += hidden_reasoning(plan, ctl.chunk_tokens, copies)
    for text, tokens in group(words, ctl.chunk_tokens):
        for i in range(copies):
            frames.append(Frame(chunk([choice(i, {"content": text})]), tokens, paced=i == 0, content=True))
    frames += [Frame(chunk([choice(i, {}, finish)])) for i in range(copies)]
    if include_usage and usage is not None:
        frames.append(Frame(chunk([], usage=usage), final_usage=True))
    frames.append(Frame(sse.DONE))

    def error_frame(_written: int) -> Frame:
        return Frame(
            sse.data_event(
                {
                    "error": {
                        "message": "The server had an error while processing your request. Sorry about that!",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                }
            )
        )

    return await call.send_stream(frames, content_type="text/event-stream; charset=utf-8", error_frame=error_frame)


# --------------------------------------------------------------------------------------------------
# Embeddings and models

_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}


def embedding_vector(text_key: str, dimensions: int) -> list[float]:
    """A deterministic unit-length vector derived from the input (same input, same vector)."""
    seed = hashlib.sha256(text_key.encode()).digest()
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values.extend((byte - 127.5) / 127.5 for byte in block)
        counter += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


async def embeddings(call: Call, raw: Any) -> web.StreamResponse:
    """``POST /v1/embeddings``: usage has prompt tokens only (cl100k_base)."""
    body = require_object(raw)
    model = call.record.model
    if not model:
        raise UpstreamError(400, "you must provide a model parameter")
    source = body.get("input")
    if source is None or source == "" or source == []:
        raise UpstreamError(400, "'input' : input cannot be an empty string.", param="input")
    inputs: list[Any]
    if isinstance(source, str) or (isinstance(source, list) and source and all(isinstance(x, int) for x in source)):
        inputs = [source]
    elif isinstance(source, list):
        inputs = source
    else:
        raise UpstreamError(400, "Invalid type for 'input'.", param="input")
    dimensions = optional_int(body, "dimensions") or _EMBEDDING_DIMENSIONS.get(model, 1536)
    prompt = await call.count(lambda: count_embedding_input(inputs))
    call.note(input_tokens=prompt, finish_reason=None)
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(repr(item), dimensions)
        encoded: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not call.ctl.omit_usage:
        payload["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return await call.send_json(payload, usage_sent=not call.ctl.omit_usage)


def models_payload(models: list[str]) -> dict[str, Any]:
    """``GET /v1/models`` in OpenAI's list shape."""
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "testupstream"} for m in models],
    }
