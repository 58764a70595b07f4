"""OpenAI Chat Completions, Responses, Embeddings, images and transcriptions (also vLLM, Ollama, DashScope
compatible mode). Images and audio live in openai_media.py."""

from __future__ import annotations

from typing import Any

from tokenbudget_api.usage import Usage
from tokenbudget_sidecar.dialects.base import (
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
    json_type,
    load_json,
    read_cap,
)
from tokenbudget_sidecar.dialects.openai_media import (
    DEFAULT_IMAGE_MODEL,
    IMAGE_OPERATIONS,
    MediaTracker,
    image_hold,
    is_streamed,
    read_media,
)
from tokenbudget_sidecar.sse import Event

OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",  # legacy: usage as chat's, choices[].text
    "/v1/moderations": PASSTHROUGH,  # free
    "/v1/responses": "responses",
    "/v1/responses/compact": "responses",  # runs the model; answers a CompactedResponse with Responses' usage
    "/v1/responses/input_tokens": PASSTHROUGH,  # token counting: free
    "/v1/embeddings": "embeddings",
    **IMAGE_OPERATIONS,  # images (JSON or multipart), transcriptions (multipart)
}
MEDIA = frozenset(IMAGE_OPERATIONS.values())
LEGACY_DEFAULT_MAX_TOKENS = 16  # /v1/completions generates at most 16 tokens unless told otherwise
ERROR_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_exceeded", 502: "server_error",
               504: "server_error"}


def usage_of(raw: Any) -> Usage | None:
    """Chat (`prompt_tokens`...) and Responses/Embeddings (`input_tokens`...) usage, normalized."""
    if not isinstance(raw, dict):
        return None
    in_details = as_dict(raw.get("prompt_tokens_details") or raw.get("input_tokens_details"))
    out_details = as_dict(raw.get("completion_tokens_details") or raw.get("output_tokens_details"))
    return Usage(
        input_tokens=as_int(raw.get("prompt_tokens", raw.get("input_tokens"))),
        cached_input_tokens=as_int(in_details.get("cached_tokens")),
        cache_creation_input_tokens=as_int(in_details.get("cache_write_tokens")),
        output_tokens=as_int(raw.get("completion_tokens", raw.get("output_tokens"))),
        reasoning_tokens=as_int(out_details.get("reasoning_tokens")),
    )


class OpenAIDialect(Dialect):
    name = "openai"
    PROMPT_KEYS = ("messages", "input", "instructions", "tools", "functions", "response_format", "text", "prompt",
                   "suffix")
    TOOL_KEYS = ("tools", "functions")
    MEDIA_TOKENS = 1445  # a gpt-4o-family image at detail high, the largest: 85 + 170 * 8 tiles
    auth_header = "authorization"

    def operation(self, method: str, path: str) -> str | None:
        if method == "POST" and path in OPERATIONS:
            return OPERATIONS[path]  # anything else is forwarded as is (transparent.py)
        if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            return PASSTHROUGH
        return None

    def parse(self, operation: str, path: str, body: JSON, user_header: str | None) -> Call:
        if operation in MEDIA:
            return self._parse_media(operation, body, user_header)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter")
        fields = ("max_output_tokens",) if operation == "responses" else ("max_completion_tokens", "max_tokens")
        caps = [_cap(body, key) for key in fields]
        cap = next((c for c in caps if c is not None), None)
        if operation == "completions" and cap is None:
            cap = LEGACY_DEFAULT_MAX_TOKENS
        user = user_header or (body.get("user") if isinstance(body.get("user"), str) else None)
        return Call(operation, model, stream=body.get("stream") is True, user=user, output_cap=cap)

    def _parse_media(self, operation: str, body: JSON, user_header: str | None) -> Call:
        """Images and transcriptions: no output cap field; an image call holds what its images would cost."""
        model = body.get("model")
        if operation == "images" and model is None:
            model = DEFAULT_IMAGE_MODEL
        if not isinstance(model, str) or not model:
            raise BadRequest("you must provide a model parameter", param="model")
        user = user_header or (body.get("user") if isinstance(body.get("user"), str) else None)
        return Call(operation, model, stream=is_streamed(body), user=user,
                    output_cap=image_hold(body) if operation == "images" else None)

    def prepare(self, call: Call, body: JSON) -> bool:
        """Chat streams report usage only when asked; ask, and hide the extra chunk from the app."""
        if call.operation not in ("chat", "completions") or not call.stream:
            return False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        call.injected_usage = True
        return True

    def set_output_cap(self, call: Call, body: JSON, cap: int) -> None:
        if call.operation in MEDIA:
            return  # no such field: images and transcriptions are not capped by the request
        # Chat: keep the field the app used (some compatible servers read only max_tokens; o-series and
        # gpt-5 reject max_tokens, so a request without either gets max_completion_tokens).
        if call.operation == "responses":
            key = "max_output_tokens"
        elif "max_tokens" in body and "max_completion_tokens" not in body:
            key = "max_tokens"
        else:
            key = "max_completion_tokens"
        body[key] = cap
        call.output_cap = cap

    def prompt_messages(self, body: JSON) -> int:
        items = body.get("messages", body.get("input"))
        return len(items) + 1 if isinstance(items, list) else 2


    def read_response(self, call: Call, body: JSON) -> Reading:
        if call.operation in MEDIA:
            return read_media(call, body)
        reading = Reading(usage=usage_of(body.get("usage")), finished=True)
        first_id(reading, body.get("id"))
        if call.operation in ("chat", "completions"):
            for choice in as_list(body.get("choices")):
                if isinstance(choice, dict):
                    reading.truncated |= choice.get("finish_reason") == "length"
                    message = choice.get("message")
                    content = message.get("content") if isinstance(message, dict) else choice.get("text")
                    if isinstance(content, str):
                        reading.text.append(content)
                        reading.answer_text.append(content)
                    _reasoning_text(reading, choice.get("message"))
        elif call.operation == "responses":
            reading.truncated = body.get("status") == "incomplete"
            reading.deferred = body.get("background") is True and body.get("status") in ("queued", "in_progress")
            for item in as_list(body.get("output")):
                if not isinstance(item, dict):
                    continue
                parts = [p for key in ("content", "summary") if isinstance(item.get(key), list) for p in item[key]]
                for part in parts:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        kind = part.get("type")
                        if kind == "output_text":
                            reading.answer_text.append(part["text"])
                        elif kind in ("reasoning_text", "summary_text"):
                            reading.thinking_text.append(part["text"])
        return reading

    def tracker(self, call: Call) -> StreamTracker:
        if call.operation in MEDIA:
            return MediaTracker(call)
        return ResponsesTracker(call) if call.operation == "responses" else ChatTracker(call)

    def error(self, status: int, message: str, *, retry_after: float | None = None, param: str | None = None,
              code: str | None = None) -> JSON:
        kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        code = "rate_limit_exceeded" if status == 429 else code
        return {"error": {"message": message, "type": "tokens" if status == 429 else kind, "param": param,
                          "code": code}}

    def auth(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}


def _cap(body: JSON, key: str) -> int | None:
    """An output cap field, refused in OpenAI's own words when it is not an integer ≥ 1."""
    try:
        return read_cap(body.get(key), 1)
    except CapProblem as bad:
        if bad.kind == "type":
            raise BadRequest(f"Invalid type for '{key}': expected an integer, but got {json_type(bad.value)} "
                             "instead.", param=key, code="invalid_type") from None
        bound, word = ("minimum", "below") if bad.kind == "below" else ("maximum", "above")
        limit = ">= 1" if bad.kind == "below" else f"<= {2**31 - 1}"
        raise BadRequest(f"Invalid '{key}': integer {word} {bound} value. Expected a value {limit}, but got "
                         f"{bad.value} instead.", param=key, code=f"integer_{word}_{bound[:3]}_value") from None


def _reasoning_text(reading: Reading, message: Any) -> None:
    """Thinking text of compatible servers: `reasoning_content` (DeepSeek, DashScope, old vLLM) or
    `reasoning` (Ollama, vLLM since late 2025), in a message or a stream delta."""
    if isinstance(message, dict):
        for key in ("reasoning_content", "reasoning"):
            if isinstance(message.get(key), str):
                reading.thinking_text.append(message[key])
                reading.text.append(message[key])  # generated, hence billed: part of any estimate


class ChatTracker(StreamTracker):
    def on_event(self, event: Event) -> bool:
        r = self.reading
        if event.data.startswith("[DONE]"):
            r.finished = True
            return True
        chunk = load_json(event.data)
        if chunk is None:
            return True
        if "error" in chunk:
            r.error = True
            return True
        first_id(r, chunk.get("id"))
        usage = usage_of(chunk.get("usage"))
        if usage is not None:
            r.usage = usage
        choices = chunk.get("choices")
        for choice in as_list(choices):
            if not isinstance(choice, dict):
                continue
            r.truncated |= choice.get("finish_reason") == "length"
            delta = choice.get("delta")
            content = delta.get("content") if isinstance(delta, dict) else choice.get("text")  # legacy: text
            if isinstance(content, str):
                r.text.append(content)
                r.answer_text.append(content)
            _reasoning_text(r, choice.get("delta"))
        # The usage-only chunk we asked for on the app's behalf: the app never asked to see it.
        return not (self.call.injected_usage and usage is not None and choices == [])


class ResponsesTracker(StreamTracker):
    TERMINAL = ("response.completed", "response.incomplete", "response.failed")
    REASONING_DELTAS = ("response.reasoning_text.delta", "response.reasoning_summary_text.delta")

    def on_event(self, event: Event) -> bool:
        r = self.reading
        data = load_json(event.data)
        if data is None:
            return True
        kind = data.get("type", event.event)
        first_id(r, as_dict(data.get("response")).get("id"))
        if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            r.text.append(data["delta"])
            r.answer_text.append(data["delta"])
        elif kind in self.REASONING_DELTAS and isinstance(data.get("delta"), str):
            r.thinking_text.append(data["delta"])
            r.text.append(data["delta"])
        elif kind in self.TERMINAL:
            response = as_dict(data.get("response"))
            r.usage = usage_of(response.get("usage")) or r.usage
            r.truncated = kind == "response.incomplete"
            r.finished = True
        elif kind == "error":
            r.error = True
        return True
