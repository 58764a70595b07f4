"""Anthropic Messages and token counting (docs/wire-formats.md §6).

Faithful where a metering proxy can trip: ``usage.input_tokens`` *excludes* cache reads and cache
writes (``cache_read_input_tokens`` / ``cache_creation_input_tokens``), ``output_tokens`` includes
thinking, the stream opens with ``message_start`` whose ``output_tokens`` is a placeholder (1), sends
``event: ping`` after the first block opens, and ends with a ``message_delta`` whose usage is
*cumulative* (it repeats the input and cache counts) followed by ``message_stop``. Thinking blocks
(``thinking`` enabled or adaptive) stream as ``thinking_delta`` then one ``signature_delta``;
``display: "omitted"`` sends the signature only. ``output_tokens_details.thinking_tokens`` (2026) is
sent whenever thinking is on.

Thinking budget: ``{"type": "enabled", "budget_tokens": N}`` → N (strict mode enforces the real
rule ``1024 <= N < max_tokens``); ``adaptive`` / ``between_tools`` → the ``output_config.effort``
budget from the effort table, or no budget; ``disabled`` or absent → no thinking at all.
"""

from __future__ import annotations

import base64
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
from .tokens import answer_words, count_messages, group, thinking_words

_ERROR_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: (
        "rate_limit_error",
        "This request would exceed your organization's rate limit of 50 requests per minute "
        "(org: testupstream, model: {model}). Please try again later.",
    ),
    500: ("api_error", "Internal server error"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}


def render_error(call: Call, error: UpstreamError) -> ErrorAnswer:
    """``{"type": "error", "error": {type, message}, "request_id"}`` plus retry hints."""
    kind, message = _ERROR_DEFAULTS.get(error.status, ("api_error", "Internal server error"))
    request_id = "req_" + call.request_id.removeprefix("msg_")
    body = {
        "type": "error",
        "error": {
            "type": error.kind or kind,
            "message": error.message or message.format(model=call.record.model or "unknown"),
        },
        "request_id": request_id,
    }
    headers = {"request-id": request_id}
    retry_after = call.controls.retry_after_s if call.controls is not None else None
    if retry_after is not None and error.status >= 429:
        headers["retry-after"] = format_seconds(retry_after)
    if error.status == 429 or error.status >= 500:
        headers["x-should-retry"] = "true"
    return error.status, body, headers


SPEC = DialectSpec(
    dialect="anthropic",
    new_id=lambda: new_id("msg_"),
    render_error=render_error,
    success_headers=lambda rid: {"request-id": "req_" + rid.removeprefix("msg_")},
    model_of=body_model,
    stream_of=body_stream,
    in_stream_error_status=529,
)


def _count(body: dict[str, Any]) -> int:
    """Anthropic request as chat messages for counting (see tokens.py)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": system})
    source = body.get("messages")
    if isinstance(source, list):
        messages += [m for m in source if isinstance(m, dict)]
    return count_messages(messages, [body.get("tools")])


def _thinking(body: dict[str, Any], max_tokens: int, call: Call) -> tuple[bool, int | None, bool]:
    """(thinking enabled, budget, display omitted) from ``thinking`` / ``output_config``."""
    config = body.get("thinking")
    if not isinstance(config, dict):
        return False, None, False
    kind = config.get("type")
    omitted = config.get("display") == "omitted"
    if kind == "enabled":
        budget = config.get("budget_tokens")
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise UpstreamError(400, "thinking.enabled.budget_tokens: Field required")
        if call.settings.strict_params:
            if budget < 1024:
                raise UpstreamError(
                    400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                )
            if budget >= max_tokens:
                raise UpstreamError(
                    400,
                    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation "
                    "at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size",
                )
        return True, budget, omitted
    if kind in ("adaptive", "between_tools"):
        output_config = body.get("output_config")
        effort = output_config.get("effort") if isinstance(output_config, dict) else None
        return True, effort_budget(effort, call.settings), omitted
    return False, None, False


def usage_object(plan: Plan, thinking_on: bool) -> dict[str, Any]:
    """A Messages ``usage`` object (input excludes cache reads and writes)."""
    usage: dict[str, Any] = {
        "input_tokens": plan.uncached_prompt_tokens,
        "cache_creation_input_tokens": plan.cache_creation_tokens,
        "cache_read_input_tokens": plan.cached_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": plan.cache_creation_tokens, "ephemeral_1h_input_tokens": 0},
        "output_tokens": plan.output_tokens,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    if thinking_on:
        usage["output_tokens_details"] = {"thinking_tokens": plan.reasoning_tokens}
    return usage


async def messages(call: Call, raw: Any) -> web.StreamResponse:
    """``POST /v1/messages``."""
    body = require_object(raw)
    model = call.record.model
    if not model:
        raise UpstreamError(400, "model: Field required")
    if not isinstance(body.get("messages"), list):
        raise UpstreamError(400, "messages: Field required")
    max_tokens = optional_int(body, "max_tokens")
    if max_tokens is None:
        raise UpstreamError(400, "max_tokens: Field required")
    thinking_on, budget, omitted = _thinking(body, max_tokens, call)
    ctl = call.ctl
    plan = make_plan(
        ctl,
        counted_prompt=await call.count(lambda: _count(body)),
        output_cap=max_tokens,
        thinking_budget=budget,
        thinking_enabled=thinking_on,
    )
    stop_reason = "max_tokens" if plan.truncated else "end_turn"
    call.note_plan(plan, stop_reason)
    usage = None if ctl.omit_usage else usage_object(plan, thinking_on)
    thinking = thinking_words(plan.reasoning_tokens)
    answer = answer_words(plan.visible_tokens)
    signature = base64.b64encode(f"testupstream-signature:{call.request_id}".encode()).decode()
    with_thinking_block = thinking_on and plan.reasoning_tokens > 0

    content: list[dict[str, Any]] = []
    if with_thinking_block:
        content.append({"type": "thinking", "thinking": "" if omitted else "".join(thinking), "signature": signature})
    if answer:
        content.append({"type": "text", "text": "".join(answer)})

    def message(blocks: list[dict[str, Any]], stop: str | None, message_usage: dict[str, Any] | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": call.request_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
        }
        if message_usage is not None:
            payload["usage"] = message_usage
        return payload

    if body.get("stream") is not True:
        paced = plan.chunk_count(ctl.chunk_tokens)
        return await call.send_json(
            message(content, stop_reason, usage),
            output_tokens=plan.output_tokens,
            paced_chunks=paced,
            usage_sent=usage is not None,
        )

    padding = call.settings.anthropic_json_padding
    counter = 0

    def event(name: str, payload: dict[str, Any]) -> bytes:
        nonlocal counter
        counter += 1
        return sse.named_event(name, payload, pad=(counter * 7) % 16 + 1 if padding else 0)

    start_usage = None if usage is None else {**usage, "output_tokens": 1}
    if start_usage is not None:
        start_usage.pop("output_tokens_details", None)
    frames = [Frame(event("message_start", {"type": "message_start", "message": message([], None, start_usage)}))]
    pinged = False

    def open_block(index: int, block: dict[str, Any]) -> None:
        nonlocal pinged
        frames.append(
            Frame(event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        )
        if not pinged:
            frames.append(Frame(event("ping", {"type": "ping"})))
            pinged = True

    def delta(index: int, payload: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload})

    index = 0
    if with_thinking_block:
        open_block(index, {"type": "thinking", "thinking": "", "signature": ""})
        for text, tokens in group(thinking, ctl.chunk_tokens):
            data = b"" if omitted else delta(index, {"type": "thinking_delta", "thinking": text})
            frames.append(Frame(data, tokens, paced=True, content=True))
        frames.append(Frame(delta(index, {"type": "signature_delta", "signature": signature})))
        frames.append(Frame(event("content_block_stop", {"type": "content_block_stop", "index": index})))
        index += 1
    if answer:
        open_block(index, {"type": "text", "text": ""})
        for text, tokens in group(answer, ctl.chunk_tokens):
            frames.append(Frame(delta(index, {"type": "text_delta", "text": text}), tokens, paced=True, content=True))
        frames.append(Frame(event("content_block_stop", {"type": "content_block_stop", "index": index})))
    final_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if usage is not None:
        final_delta["usage"] = {
            key: usage[key]
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
        }
        if "output_tokens_details" in usage:
            final_delta["usage"]["output_tokens_details"] = usage["output_tokens_details"]
    frames.append(Frame(event("message_delta", final_delta), final_usage=usage is not None))
    frames.append(Frame(event("message_stop", {"type": "message_stop"})))

    def error_frame(_written: int) -> Frame:
        return Frame(event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))

    return await call.send_stream(frames, content_type="text/event-stream; charset=utf-8", error_frame=error_frame)


async def count_tokens(call: Call, raw: Any) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: the counted prompt (no cache notion, nothing billed)."""
    body = require_object(raw)
    if not call.record.model:
        raise UpstreamError(400, "model: Field required")
    if not isinstance(body.get("messages"), list):
        raise UpstreamError(400, "messages: Field required")
    return await call.send_json({"input_tokens": await call.count(lambda: _count(body))})


def models_payload(models: list[str]) -> dict[str, Any]:
    """``GET /v1/models`` as Anthropic spells it (chosen when the request has anthropic-version)."""
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
