"""Anthropic Messages."""

from __future__ import annotations

from typing import Any

from tokenbudget_api.usage import Usage
from tokenbudget_sidecar.dialects.base import (
    INT32_MAX,
    JSON,
    PASSTHROUGH,
    BadRequest,
    Call,
    CapProblem,
    Dialect,
    Reading,
    StreamTracker,
    as_dict,
    as_int,
    as_list,
    first_id,
    load_json,
    read_cap,
)
from tokenbudget_sidecar.sse import Event

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large",
               415: "invalid_request_error", 429: "rate_limit_error", 502: "api_error", 504: "timeout_error"}


def usage_of(raw: Any, previous: Usage | None = None) -> Usage | None:
    """Anthropic's input_tokens excludes cache reads and writes; we add them back (see tokenbudget_api.usage).

    In a stream, message_delta repeats only some fields; the others keep their message_start value.
    """
    if not isinstance(raw, dict):
        return previous
    prev = previous or Usage()
    base = prev.input_tokens - prev.cached_input_tokens - prev.cache_creation_input_tokens

    def pick(key: str, old: int) -> int:
        return as_int(raw[key]) if key in raw and raw[key] is not None else old

    uncached = pick("input_tokens", base)
    read = pick("cache_read_input_tokens", prev.cached_input_tokens)
    write = pick("cache_creation_input_tokens", prev.cache_creation_input_tokens)
    details = as_dict(raw.get("output_tokens_details"))
    return Usage(
        input_tokens=uncached + read + write,
        cached_input_tokens=read,
        cache_creation_input_tokens=write,
        output_tokens=pick("output_tokens", prev.output_tokens),
        reasoning_tokens=as_int(details.get("thinking_tokens")) if details else prev.reasoning_tokens,
    )


class AnthropicDialect(Dialect):
    name = "anthropic"
    PROMPT_KEYS = ("system", "messages", "tools")
    MEDIA_TOKENS = 1600  # an image scaled to Claude's 1.15 megapixel limit: about (w * h) / 750
    auth_header = "x-api-key"

    def operation(self, method: str, path: str) -> str | None:
        if method == "POST" and path == "/v1/messages":
            return "messages"
        if (method == "POST" and path == "/v1/messages/count_tokens") or (
            method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/"))
        ):
            return PASSTHROUGH
        return None

    def parse(self, operation: str, path: str, body: JSON, user_header: str | None) -> Call:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        try:
            cap = read_cap(body.get("max_tokens"), 0)  # 0 is allowed: it pre-warms the prompt cache
        except CapProblem as bad:
            words = {"type": "a valid integer", "below": "greater than or equal to 0",
                     "above": f"less than or equal to {INT32_MAX}"}
            raise BadRequest(f"max_tokens: Input should be {words[bad.kind]}", param="max_tokens") from None
        metadata = body.get("metadata")
        user = user_header or (metadata.get("user_id") if isinstance(metadata, dict) else None)
        return Call(operation, model, stream=body.get("stream") is True,
                    user=user if isinstance(user, str) else None,
                    output_cap=cap)

    def set_output_cap(self, call: Call, body: JSON, cap: int) -> None:
        body["max_tokens"] = cap
        call.output_cap = cap

    def prompt_messages(self, body: JSON) -> int:
        messages = body.get("messages")
        return (len(messages) if isinstance(messages, list) else 1) + (1 if body.get("system") else 0)


    def read_response(self, call: Call, body: JSON) -> Reading:
        reading = Reading(usage=usage_of(body.get("usage")), finished=True,
                          truncated=body.get("stop_reason") == "max_tokens")
        first_id(reading, body.get("id"))
        for block in as_list(body.get("content")):
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                reading.text.append(block["text"])
                reading.answer_text.append(block["text"])
            elif isinstance(block, dict) and isinstance(block.get("thinking"), str):
                reading.thinking_text.append(block["thinking"])
        return reading

    def tracker(self, call: Call) -> StreamTracker:
        return MessagesTracker(call)

    def error(self, status: int, message: str, *, retry_after: float | None = None, param: str | None = None,
              code: str | None = None) -> JSON:
        kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}


class MessagesTracker(StreamTracker):
    def on_event(self, event: Event) -> bool:
        r = self.reading
        data = load_json(event.data)
        if data is None:
            return True
        kind = data.get("type", event.event)
        if kind == "message_start":
            message = as_dict(data.get("message"))
            r.usage = usage_of(message.get("usage"))
            first_id(r, message.get("id"))
        elif kind == "message_delta":
            r.usage = usage_of(data.get("usage"), r.usage)
            r.truncated = as_dict(data.get("delta")).get("stop_reason") == "max_tokens"
        elif kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            text = delta.get("text", delta.get("thinking"))
            if isinstance(text, str):
                r.text.append(text)
                (r.thinking_text if "thinking" in delta else r.answer_text).append(text)
        elif kind == "message_stop":
            r.finished = True
        elif kind == "error":
            r.error = True
        return True
