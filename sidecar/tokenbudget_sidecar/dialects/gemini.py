"""Google Gemini generateContent / streamGenerateContent (v1 and v1beta)."""

from __future__ import annotations

import json
import re
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
    load_json,
    read_cap,
)
from tokenbudget_sidecar.sse import Event

ROUTE = re.compile(r"^/(v1|v1beta|v1alpha)/(?:models|tunedModels)/([^/:]+):([A-Za-z]+)$")
STATUSES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 415: "INVALID_ARGUMENT",
            429: "RESOURCE_EXHAUSTED", 502: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def usage_of(raw: Any) -> Usage | None:
    """candidatesTokenCount excludes thoughts; we add them so output means all generated tokens."""
    if not isinstance(raw, dict):
        return None
    thoughts = as_int(raw.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=as_int(raw.get("promptTokenCount")) + as_int(raw.get("toolUsePromptTokenCount")),
        cached_input_tokens=as_int(raw.get("cachedContentTokenCount")),
        output_tokens=as_int(raw.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
    )


def _read_chunk(reading: Reading, body: JSON) -> None:
    first_id(reading, body.get("responseId"))
    usage = usage_of(body.get("usageMetadata"))
    if usage is not None:
        reading.usage = usage  # a running snapshot: the last one wins
    for cand in as_list(body.get("candidates")):
        if not isinstance(cand, dict):
            continue
        reason = cand.get("finishReason")
        if reason:
            reading.finished = True
            reading.truncated = reason == "MAX_TOKENS"
        for part in as_list(as_dict(cand.get("content")).get("parts")):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                reading.text.append(part["text"])
                (reading.thinking_text if part.get("thought") is True else reading.answer_text).append(part["text"])


class GeminiDialect(Dialect):
    name = "gemini"
    PROMPT_KEYS = ("contents", "systemInstruction", "system_instruction", "tools", "content", "requests")
    MEDIA_TOKENS = 1120  # an image at media resolution high (Gemini 3); Gemini 2 bills 258 per 768 px tile
    auth_header = "x-goog-api-key"

    def operation(self, method: str, path: str) -> str | None:
        match = ROUTE.match(path)
        if method == "POST" and match:
            verb = match.group(3)
            if verb in ("generateContent", "streamGenerateContent"):
                return "generate"
            if verb in ("embedContent", "batchEmbedContents"):
                return "embed"  # billed per input token; the answer reports none, so the prompt is estimated
            if verb == "countTokens":
                return PASSTHROUGH
        if method == "GET" and re.match(r"^/(v1|v1beta)/models(/[^/]+)?$", path):
            return PASSTHROUGH
        return None

    def parse(self, operation: str, path: str, body: JSON, user_header: str | None) -> Call:
        match = ROUTE.match(path)
        assert match is not None  # operation() matched it
        if operation == "embed":
            return Call(operation, match.group(2), user=user_header, output_cap=0)
        config = body.get("generationConfig") or body.get("generation_config") or {}
        raw = config.get("maxOutputTokens", config.get("max_output_tokens")) if isinstance(config, dict) else None
        try:
            cap = read_cap(raw, 0)
        except CapProblem as bad:
            why = ": must not be negative" if bad.kind == "below" else ""
            raise BadRequest(f"Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), "
                             f"{json.dumps(bad.value)}{why}", param="generationConfig.maxOutputTokens") from None
        return Call(operation, match.group(2), stream=match.group(3) == "streamGenerateContent",
                    user=user_header, output_cap=cap)

    def labelled_user(self, body: JSON, label: str) -> str | None:
        labels = body.get("labels")
        value = labels.get(label) if isinstance(labels, dict) else None
        return value if isinstance(value, str) and value else None

    def set_output_cap(self, call: Call, body: JSON, cap: int) -> None:
        key = "generation_config" if "generation_config" in body and "generationConfig" not in body else (
            "generationConfig")
        config = body.setdefault(key, {})
        if isinstance(config, dict):
            config.pop("max_output_tokens", None)
            config["maxOutputTokens"] = cap
        call.output_cap = cap

    def set_model(self, call: Call, body: JSON, path: str, model: str) -> str:
        match = ROUTE.match(path)
        assert match is not None
        call.model = model
        return path[: match.start(2)] + model + path[match.end(2) :]

    def prompt_messages(self, body: JSON) -> int:
        contents = body.get("contents")
        return len(contents) + 1 if isinstance(contents, list) else 2


    def read_response(self, call: Call, body: JSON) -> Reading:
        reading = Reading()
        _read_chunk(reading, body)
        reading.finished = True
        return reading

    def tracker(self, call: Call) -> StreamTracker:
        return GenerateTracker(call)

    def error(self, status: int, message: str, *, retry_after: float | None = None, param: str | None = None,
              code: str | None = None) -> JSON:
        details: list[JSON] = []
        if retry_after is not None:
            details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": f"{max(retry_after, 0):.0f}s"})
        status_name = STATUSES.get(status, "INVALID_ARGUMENT" if status < 500 else "INTERNAL")
        return {"error": {"code": status, "message": message, "status": status_name, "details": details}}


class GenerateTracker(StreamTracker):
    def on_event(self, event: Event) -> bool:
        data = load_json(event.data)
        if data is None:
            return True
        if "error" in data:
            self.reading.error = True
        else:
            _read_chunk(self.reading, data)
        return True
