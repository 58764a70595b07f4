"""What the proxy needs to know about a provider's wire format, and nothing more.

One `Dialect` per provider; the proxy stays the same for all three. A dialect reads requests (model,
stream, output cap, user, prompt text), reads usage from whole responses and from SSE streams, and
writes errors in the shape that provider's SDK parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tokenbudget_api.usage import Usage
from tokenbudget_sidecar.sse import Event

JSON = dict[str, Any]
PASSTHROUGH = "passthrough"


INT32_MAX = 2**31 - 1  # no provider takes an output cap past this (Gemini's field is an int32)


class BadRequest(Exception):
    """The app's request is malformed in a way the provider would also reject; answered as a 400.

    `param` and `code` fill the fields of the provider's error body that name the culprit (OpenAI's
    `param`/`code`), so the SDK's exception says which field was wrong.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class CapProblem(Exception):
    """An output cap that is not an integer in range: the dialect words it as its provider would."""

    def __init__(self, kind: str, value: object) -> None:
        super().__init__(kind)
        self.kind, self.value = kind, value  # kind: "type", "below" or "above"


def read_cap(value: object, minimum: int) -> int | None:
    """An output cap from JSON: None when absent or null; raises CapProblem otherwise unless it is an
    integer in [minimum, INT32_MAX]. An integral float (50.0) is that integer: JSON has one number type.

    Why strictly: a cap we cannot read as the provider will is a hold we cannot size. A string was once
    forwarded as if there were no cap; a negative or absurd one makes a negative or absurd reservation.
    """
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CapProblem("type", value)
    if value < minimum:
        raise CapProblem("below", value)
    if value > INT32_MAX:
        raise CapProblem("above", value)
    return value


def json_type(value: object) -> str:
    """The JSON name of a value's type, as providers' validation messages say it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


@dataclass
class Call:
    """What the sidecar learned from one request."""

    operation: str
    model: str
    stream: bool = False
    user: str | None = None
    output_cap: int | None = None
    injected_usage: bool = False  # we asked upstream for a usage chunk the app did not ask for


@dataclass
class Reading:
    """What a response (whole, or streamed so far) said about usage."""

    usage: Usage | None = None
    truncated: bool = False
    finished: bool = False  # the provider's terminal event or whole body was seen
    streamed: bool = False  # read from an event stream: one that ends unfinished broke (settlement.broken_stream)
    error: bool = False  # an in-stream error event
    response_id: str | None = None  # the provider's id of the answer (chatcmpl-…, resp_…, msg_…, responseId)
    deferred: bool = False  # a background Response answered queued: a later retrieve shows its usage (background.py)
    text: list[str] = field(default_factory=list)  # generated text seen, for estimates only
    # ThinkTier measurement (thinking.measure): the answer the app sees apart from the model's thinking,
    # so a length stop with an empty answer (thinking ate the cap) can be told from a long answer cut
    # short, and thinking can be estimated when the provider gives no breakdown (Anthropic, compat servers).
    answer_text: list[str] = field(default_factory=list)  # visible answer text (not thinking)
    thinking_text: list[str] = field(default_factory=list)  # thinking / reasoning text or summary seen

    @property
    def broke(self) -> bool:
        """A stream that ended without its provider's completion event, or with an error event in it."""
        return self.streamed and (self.error or not self.finished)


class StreamTracker:
    """Follows one SSE stream; `on_event` returns False for an event the app must not see."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.reading = Reading()

    def on_event(self, event: Event) -> bool:
        raise NotImplementedError


def first_id(reading: Reading, value: object) -> None:
    if reading.response_id is None and isinstance(value, str) and value:
        reading.response_id = value


def as_dict(value: object) -> JSON:
    """A JSON object from a provider's answer, or {} when it has another shape: answers are read, never
    trusted to have the documented types (a reader that raises breaks a call the provider billed)."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    """A JSON array from a provider's answer, or [] when it has another shape (see as_dict)."""
    return value if isinstance(value, list) else []


def as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def load_json(data: str) -> JSON | None:
    """A provider's JSON object, or None: not JSON, not an object, or nested past the parser's limit (a reader
    that raised here would break a stream the provider already bills)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Prompt:
    """What a request's prompt costs before the call: text to count, turns for framing, media allowances."""

    texts: list[str]
    messages: int
    media_tokens: int = 0


# A part the provider bills by its pixels, pages or seconds, not by its bytes (which may be a URL or base64):
# held at the dialect's MEDIA_TOKENS each, never counted as text (a base64 image is not 700,000 tokens).
MEDIA_TYPES = frozenset({"image_url", "input_image", "image", "input_audio", "audio", "document", "file",
                         "input_file"})
MEDIA_KEYS = frozenset({"inlineData", "inline_data", "fileData", "file_data"})  # Gemini's parts


def prompt_parts(value: Any) -> tuple[list[str], int]:
    """Every string under a JSON value (a conservative basis for counting) and how many media parts it has."""
    out: list[str] = []
    media = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            kind = item.get("type")  # any JSON value: a list or object here must not raise (unhashable)
            if ((isinstance(kind, str) and kind in MEDIA_TYPES) or not MEDIA_KEYS.isdisjoint(item)) and (
                    not _text_source(item)):
                media += 1
                continue
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return out, media


def _text_source(part: JSON) -> bool:
    """An Anthropic document given as text is billed as text: count it as such."""
    source = part.get("source")
    return isinstance(source, dict) and source.get("type") in ("text", "content")


class Dialect:
    name: ClassVar[str]
    auth_header: ClassVar[str]
    PROMPT_KEYS: ClassVar[tuple[str, ...]] = ()  # body fields whose text is prompt
    # Tool and function definitions, counted as their JSON (keys too: a parameter's name is billed), which is
    # never below the providers' own renderings of them (OpenAI's TypeScript-like namespace framing).
    TOOL_KEYS: ClassVar[tuple[str, ...]] = ("tools",)
    MEDIA_TOKENS: ClassVar[int] = 0  # held per image/audio/document part (README: the overrun bound per provider)

    def prompt(self, body: JSON) -> Prompt:
        texts, media = prompt_parts([body.get(k) for k in self.PROMPT_KEYS if k not in self.TOOL_KEYS])
        texts += [json.dumps(tools, separators=(",", ":")) for k in self.TOOL_KEYS if (tools := body.get(k))]
        return Prompt(texts, self.prompt_messages(body), media * self.MEDIA_TOKENS)

    def operation(self, method: str, path: str) -> str | None:
        """`path` is relative to the upstream base URL. None: not a route we know (404)."""
        raise NotImplementedError

    def parse(self, operation: str, path: str, body: JSON, user_header: str | None) -> Call:
        raise NotImplementedError

    def prepare(self, call: Call, body: JSON) -> bool:
        """Rewrite the body in place before forwarding; True if it changed."""
        return False

    def prompt_messages(self, body: JSON) -> int:
        """How many messages (turns) the prompt has: each costs framing tokens on top of its text."""
        return 1

    def set_output_cap(self, call: Call, body: JSON, cap: int) -> None:
        """Write the output cap into the field this dialect (and operation) reads."""
        raise NotImplementedError

    def set_model(self, call: Call, body: JSON, path: str, model: str) -> str:
        """Switch the model (Downgrade); returns the request path, which carries the model for Gemini."""
        body["model"] = model
        call.model = model
        return path

    def read_response(self, call: Call, body: JSON) -> Reading:
        raise NotImplementedError

    def tracker(self, call: Call) -> StreamTracker:
        raise NotImplementedError

    def error(self, status: int, message: str, *, retry_after: float | None = None, param: str | None = None,
              code: str | None = None) -> JSON:
        raise NotImplementedError

    def auth(self, key: str) -> dict[str, str]:
        return {self.auth_header: key}

    def labelled_user(self, body: JSON, label: str) -> str | None:
        """The end user named by request label `label` (Gemini's labels); None where a dialect has none."""
        return None
