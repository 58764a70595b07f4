"""Gemini Developer API: generateContent, streamGenerateContent, countTokens (docs/wire-formats.md §7).

Served under both ``/v1beta/models/{model}:{method}`` and ``/v1/models/{model}:{method}`` (google-genai
3.x uses ``v1``); the model id comes from the path. Faithful where a metering proxy can trip:

- ``usageMetadata``: ``promptTokenCount`` includes ``cachedContentTokenCount``; ``candidatesTokenCount``
  *excludes* ``thoughtsTokenCount``; ``totalTokenCount`` = prompt + candidates + thoughts. Zero counts
  are left out, as proto3 JSON does (no ``candidatesTokenCount`` when all output was thinking, no
  ``cachedContentTokenCount`` without a cache hit, no ``thoughtsTokenCount`` without thinking).
- Streams (``?alt=sse``) carry a running ``usageMetadata`` snapshot on every chunk, ``finishReason`` on
  the last one, CRLF line endings by default, and no terminator. Without ``alt=sse`` the stream is one
  JSON array written piece by piece.
- Thoughts consume ``maxOutputTokens``; thought-summary parts (``"thought": true``) are only sent with
  ``includeThoughts``. A call whose answer is empty has a candidate ``content`` without ``parts``.
- Errors are ``{"error": {code, message, status, details}}``; a 429 carries ``QuotaFailure`` and
  ``RetryInfo.retryDelay`` (from x-upstream-retry-after, else the configured default) and no
  Retry-After header.

Thinking budget: ``thinkingConfig.thinkingBudget`` N ≥ 0 → N (0 switches thinking off), -1 or absent →
no budget; ``thinkingLevel`` → the effort table. Gemini has no cache-write usage field, so
x-upstream-cache-creation-tokens is ignored here.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .behaviour import effort_budget, make_plan
from .call import Call, Frame, UpstreamError, dumps
from .dialect import DialectSpec, ErrorAnswer, format_seconds, new_id, require_object
from .tokens import answer_words, count_messages, group, thinking_words

METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}
_MESSAGES = {
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    529: "The model is overloaded. Please try again later.",
}


def split_target(request: web.Request) -> tuple[str, str]:
    """``gemini-2.5-flash:generateContent`` → (model, method); empty strings when malformed."""
    target = request.match_info.get("target", "")
    model, _, method = target.rpartition(":")
    return model, method


def _retry_delay(call: Call) -> str:
    seconds = call.controls.retry_after_s if call.controls is not None else None
    if seconds is None:
        seconds = call.settings.gemini_default_retry_delay_s
    return format_seconds(seconds) + "s"


def render_error(call: Call, error: UpstreamError) -> ErrorAnswer:
    """google.rpc.Status JSON; a 429 explains the quota and when to retry in ``details``."""
    status_name = _STATUS_NAMES.get(error.status, "UNKNOWN")
    details: list[dict[str, Any]] = []
    if error.status == 429:
        model = call.record.model or "unknown"
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": model},
                        "quotaValue": "10",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": _retry_delay(call)},
        ]
    elif error.status == 400 and error.message:
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": error.param or "", "description": error.message}],
            }
        ]
    message = error.message or _MESSAGES.get(error.status, "Internal error encountered.")
    body = {"error": {"code": error.status, "message": message, "status": status_name, "details": details}}
    return error.status, body, {}


SPEC = DialectSpec(
    dialect="gemini",
    new_id=lambda: new_id("tu", 22),
    render_error=render_error,
    success_headers=lambda _rid: {},
    model_of=lambda request, _body: split_target(request)[0],
    stream_of=lambda request, _body: split_target(request)[1] == "streamGenerateContent",
    in_stream_error_status=503,
    error_indent=2,
)


def _get(mapping: Any, camel: str, snake: str) -> Any:
    """Proto3-JSON accepts both spellings of a field name."""
    if not isinstance(mapping, dict):
        return None
    return mapping.get(camel, mapping.get(snake))


def _count(body: dict[str, Any]) -> int:
    """Gemini request as chat messages for counting (see tokens.py)."""
    messages: list[dict[str, Any]] = []
    system = _get(body, "systemInstruction", "system_instruction")
    if isinstance(system, dict):
        messages.append({"role": "system", "content": system.get("parts")})
    elif isinstance(system, str):
        messages.append({"role": "system", "content": system})
    contents = body.get("contents")
    if isinstance(contents, dict):
        contents = [contents]
    if isinstance(contents, list):
        for entry in contents:
            if isinstance(entry, dict):
                messages.append({"role": entry.get("role", "user"), "content": entry.get("parts")})
    return count_messages(messages, [body.get("tools")])


def _thinking(config: Any, call: Call) -> tuple[bool, int | None, bool]:
    """(thinking enabled, budget, include thoughts) from ``generationConfig.thinkingConfig``."""
    thinking = _get(config, "thinkingConfig", "thinking_config")
    if not isinstance(thinking, dict):
        return True, None, False
    budget = _get(thinking, "thinkingBudget", "thinking_budget")
    level = _get(thinking, "thinkingLevel", "thinking_level")
    include = _get(thinking, "includeThoughts", "include_thoughts") is True
    if call.settings.strict_params and budget is not None and level is not None:
        raise UpstreamError(
            400,
            "You can only set only one of thinking budget and thinking level.",
            param="generation_config.thinking_config",
        )
    if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
        return budget > 0, budget, include
    if isinstance(level, str):
        return True, effort_budget(level, call.settings), include
    return True, None, include


def usage_metadata(prompt: int, cached: int, candidates: int, thoughts: int) -> dict[str, Any]:
    """A usageMetadata snapshot with proto3's omission of zero counts."""
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if candidates:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = prompt + candidates + thoughts
    if cached:
        usage["cachedContentTokenCount"] = cached
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if cached:
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


async def generate(call: Call, raw: Any) -> web.StreamResponse:
    """``:generateContent`` and ``:streamGenerateContent`` (SSE with ``alt=sse``, else a JSON array)."""
    body = require_object(raw)
    model = call.record.model
    stream = call.record.stream
    contents = body.get("contents")
    if not contents:
        raise UpstreamError(400, "* GenerateContentRequest.contents: contents is not specified", param="contents")
    config = _get(body, "generationConfig", "generation_config")
    cap = _get(config, "maxOutputTokens", "max_output_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)):
        raise UpstreamError(400, "Invalid value at 'generation_config.max_output_tokens'", param="generation_config")
    enabled, budget, include_thoughts = _thinking(config, call)
    ctl = call.ctl
    plan = make_plan(
        ctl,
        counted_prompt=await call.count(lambda: _count(body)),
        output_cap=cap,
        thinking_budget=budget,
        thinking_enabled=enabled,
        cache_writes_supported=False,
    )
    finish = "MAX_TOKENS" if plan.truncated else "STOP"
    call.note_plan(plan, finish)
    thoughts = thinking_words(plan.reasoning_tokens)
    answer = answer_words(plan.visible_tokens)
    signature = f"dGVzdHVwc3RyZWFt{call.request_id}"

    def chunk(parts: list[dict[str, Any]], usage: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
        content: dict[str, Any] = {"role": "model"}
        if parts:
            content = {"parts": parts, "role": "model"}
        candidate: dict[str, Any] = {"content": content}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        candidate["index"] = 0
        payload: dict[str, Any] = {"candidates": [candidate]}
        if usage is not None and not ctl.omit_usage:
            payload["usageMetadata"] = usage
        payload.update(modelVersion=model, responseId=call.request_id)
        return payload

    def usage_at(thought_tokens: int, answer_tokens: int) -> dict[str, Any]:
        return usage_metadata(plan.prompt_tokens, plan.cached_tokens, answer_tokens, thought_tokens)

    if not stream:
        parts: list[dict[str, Any]] = []
        if include_thoughts and thoughts:
            parts.append({"text": "".join(thoughts), "thought": True})
        if answer:
            part: dict[str, Any] = {"text": "".join(answer)}
            if thoughts:
                part["thoughtSignature"] = signature
            parts.append(part)
        return await call.send_json(
            chunk(parts, usage_at(plan.reasoning_tokens, plan.visible_tokens), finish),
            output_tokens=plan.output_tokens,
            paced_chunks=plan.chunk_count(ctl.chunk_tokens),
            usage_sent=not ctl.omit_usage,
            indent=2,
        )

    # Each piece: (parts, tokens it adds, is thought). Hidden thoughts are timed but send nothing.
    frames_spec: list[tuple[list[dict[str, Any]] | None, int, bool]] = []
    for text, tokens in group(thoughts, ctl.chunk_tokens):
        frames_spec.append(([{"text": text, "thought": True}] if include_thoughts else None, tokens, True))
    for position, (text, tokens) in enumerate(group(answer, ctl.chunk_tokens)):
        part = {"text": text}
        if position == 0 and thoughts:
            part["thoughtSignature"] = signature
        frames_spec.append(([part], tokens, False))

    sse_mode = call.request.query.get("alt") == "sse"
    newline = "\r\n" if call.settings.gemini_crlf else "\n"

    def encode(payload: dict[str, Any], first: bool) -> bytes:
        if sse_mode:
            return f"data: {dumps(payload, pretty_separators=True)}{newline}{newline}".encode()
        return (("[" if first else ",\r\n") + dumps(payload, indent=2)).encode()

    frames: list[Frame] = []
    thought_so_far = answer_so_far = 0
    first = True  # the JSON-array form opens with "[" on the first written chunk
    # The last piece carries finishReason when it is visible; otherwise (no output at all, or hidden
    # thoughts only) a closing chunk without parts does.
    needs_closing = not frames_spec or frames_spec[-1][0] is None
    for i, (parts_or_none, tokens, is_thought) in enumerate(frames_spec):
        if is_thought:
            thought_so_far += tokens
        else:
            answer_so_far += tokens
        if parts_or_none is None:
            frames.append(Frame(b"", tokens, paced=True, content=True))
            continue
        is_last = i == len(frames_spec) - 1 and not needs_closing
        payload = chunk(parts_or_none, usage_at(thought_so_far, answer_so_far), finish if is_last else None)
        frames.append(
            Frame(encode(payload, first), tokens, paced=True, content=True, final_usage=is_last and not ctl.omit_usage)
        )
        first = False
    if needs_closing:
        payload = chunk([], usage_at(plan.reasoning_tokens, plan.visible_tokens), finish)
        frames.append(Frame(encode(payload, first), final_usage=not ctl.omit_usage))
    if not sse_mode:
        frames.append(Frame(b"]"))

    def error_frame(written: int) -> Frame:
        error = {
            "error": {
                "code": 503,
                "message": "The model is overloaded. Please try again later.",
                "status": "UNAVAILABLE",
            }
        }
        if sse_mode:
            return Frame(f"data: {dumps(error, pretty_separators=True)}{newline}{newline}".encode())
        return Frame((("[" if written == 0 else ",\r\n") + dumps(error, indent=2) + "]").encode())

    content_type = "text/event-stream" if sse_mode else "application/json; charset=UTF-8"
    return await call.send_stream(frames, content_type=content_type, error_frame=error_frame)


async def count_tokens(call: Call, raw: Any) -> web.StreamResponse:
    """``:countTokens``: the counted prompt (also accepts a wrapped ``generateContentRequest``)."""
    body = require_object(raw)
    inner = _get(body, "generateContentRequest", "generate_content_request")
    target = inner if isinstance(inner, dict) else body
    total = await call.count(lambda: _count(target))
    return await call.send_json(
        {"totalTokens": total, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}]}, indent=2
    )
