"""What a WebSocket session bills, read from its messages: one `Billed` per usage report the provider sends.

HTTP calls report usage once per answer; a WebSocket session reports it per response it generates, inside
the messages it relays (websocket.py moves them; this module only reads). Three kinds are known, each by
its path under the upstream (docs/wire-formats.md, "WebSockets"):

- OpenAI Realtime (`/v1/realtime`, Azure `/openai/realtime`, `/openai/v1/realtime`): every `response.done`
  event carries `response.usage` {input_tokens, output_tokens, input_token_details {cached_tokens,
  text_tokens, audio_tokens, image_tokens, cached_tokens_details {text_tokens, audio_tokens}},
  output_token_details {text_tokens, audio_tokens}}. The model is the URL's `model=` (Azure: `deployment=`),
  then what `session.created` / `session.updated` / the app's `session.update` say. Input audio transcription,
  when the session asks for it (`session.audio.input.transcription.model`; beta `input_audio_transcription`),
  is billed apart at that model's rates and reported on `conversation.item.input_audio_transcription.completed`
  as `usage` {type `tokens`: input_tokens, output_tokens, input_token_details {text_tokens, audio_tokens}; or
  type `duration`: seconds (whisper-1)}: a record of its own, operation `transcriptions`.
- OpenAI Responses over WebSocket (`/v1/responses`): the app sends `response.create` events, the server
  the same events as the SSE stream; `response.completed`, `response.incomplete` and `response.failed`
  carry Responses usage and the model.
- Gemini Live (`/ws/google.ai.generativelanguage.{version}.GenerativeService.BidiGenerateContent`): the
  app's first message `setup.model` names the model; server messages carry `usageMetadata` (as
  generateContent's, with `responseTokenCount` for candidates and per-modality details). One report per
  turn: a turn's last figure is billed when `serverContent.turnComplete` has been seen (before or after it).

Not seen, so not counted: what a provider bills without reporting it in the session, such as a response the
session was cut in before its `response.done`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from multidict import MultiMapping

from tokenbudget_api.usage import Usage
from tokenbudget_sidecar.dialects.base import JSON, as_dict, as_int, as_list
from tokenbudget_sidecar.dialects.gemini import usage_of as gemini_usage
from tokenbudget_sidecar.dialects.openai import usage_of as responses_usage
from tokenbudget_sidecar.dialects.openai_media import media_usage

REALTIME = re.compile(r"^(?:/openai)?(?:/v1)?/realtime$")
RESPONSES = re.compile(r"^(?:/openai)?(?:/v1)?/responses$")
LIVE = re.compile(r"^/ws/google\.ai\.generativelanguage\.v\w+\.GenerativeService\.BidiGenerateContent(?:Constrained)?$")
RESPONSES_DONE = ("response.completed", "response.incomplete", "response.failed")
TRANSCRIBED = "conversation.item.input_audio_transcription.completed"


@dataclass(frozen=True)
class Billed:
    """One usage report of a session: a response (OpenAI) or a turn (Gemini)."""

    usage: Usage
    model: str
    response_id: str | None = None
    truncated: bool = False  # cut before the provider said the turn was complete (its last figure so far)
    operation: str | None = None  # when not the session's: a Realtime input audio transcription


def load(data: str | bytes) -> JSON | None:
    """A message's JSON object, or None (not JSON, not an object, nested past the parser's limit)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Meter:
    """Reads one session's messages. `wants_*` are cheap substring tests, so the many audio deltas of a
    session are relayed without being decoded."""

    model: str = ""
    operation: str = "websocket"
    seen: set[str] = field(default_factory=set)  # response ids already billed: a repeated event counts once

    def client(self, data: str | bytes) -> None:
        """A message the app sent."""

    def upstream(self, data: str | bytes) -> list[Billed]:
        """A message the provider sent: the usage reports in it."""
        return []

    def end(self) -> list[Billed]:
        """The session ended: a report still pending (a Gemini turn cut before turnComplete)."""
        return []

    def once(self, billed: Billed) -> list[Billed]:
        if billed.response_id is not None:
            if billed.response_id in self.seen:
                return []
            self.seen.add(billed.response_id)
        return [billed] if billed.usage.reported else []


def _has(data: str | bytes, *needles: str) -> bool:
    if isinstance(data, bytes):
        return any(n.encode() in data for n in needles)
    return any(n in data for n in needles)


def realtime_usage(raw: object) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    details = as_dict(raw.get("input_token_details"))
    cached = as_dict(details.get("cached_tokens_details"))
    out = as_dict(raw.get("output_token_details"))
    return Usage(input_tokens=as_int(raw.get("input_tokens")), cached_input_tokens=as_int(details.get("cached_tokens")),
                 input_audio_tokens=as_int(details.get("audio_tokens")),
                 input_image_tokens=as_int(details.get("image_tokens")),
                 cached_input_audio_tokens=as_int(cached.get("audio_tokens")),
                 output_tokens=as_int(raw.get("output_tokens")), output_audio_tokens=as_int(out.get("audio_tokens")))


@dataclass
class RealtimeMeter(Meter):
    transcription_model: str = ""

    def client(self, data: str | bytes) -> None:
        if _has(data, '"session.update"') and (event := load(data)) is not None:
            self._model_from(event)

    def upstream(self, data: str | bytes) -> list[Billed]:
        if not _has(data, '"response.done"', '"session.created"', '"session.updated"', f'"{TRANSCRIBED}"'):
            return []
        event = load(data)
        if event is None:
            return []
        kind = event.get("type")
        if kind in ("session.created", "session.updated", "session.update"):
            self._model_from(event)
            return []
        if kind == TRANSCRIBED:
            usage = media_usage(event.get("usage"))  # tokens (gpt-4o-*transcribe) or seconds
            item = event.get("item_id") if isinstance(event.get("item_id"), str) else None
            if usage is None:
                return []
            return self.once(Billed(usage, self.transcription_model, item, operation="transcriptions"))
        if kind != "response.done":
            return []
        response = as_dict(event.get("response"))
        usage = realtime_usage(response.get("usage"))
        rid = response.get("id") if isinstance(response.get("id"), str) else None
        return self.once(Billed(usage, self.model, rid)) if usage is not None else []

    def _model_from(self, event: JSON) -> None:
        session = as_dict(event.get("session"))
        model = session.get("model")
        if isinstance(model, str) and model:
            self.model = model
        transcription = as_dict(as_dict(as_dict(session.get("audio")).get("input")).get("transcription")) or as_dict(
            session.get("input_audio_transcription"))  # GA, then beta
        if isinstance(transcription.get("model"), str) and transcription["model"]:
            self.transcription_model = transcription["model"]


class ResponsesMeter(Meter):
    def client(self, data: str | bytes) -> None:
        if _has(data, '"response.create"') and (event := load(data)) is not None:
            model = event.get("model", as_dict(event.get("response")).get("model"))
            if isinstance(model, str) and model:
                self.model = model

    def upstream(self, data: str | bytes) -> list[Billed]:
        if not _has(data, *(f'"{kind}"' for kind in RESPONSES_DONE)):
            return []
        event = load(data)
        if event is None or event.get("type") not in RESPONSES_DONE:
            return []
        response = as_dict(event.get("response"))
        usage = responses_usage(response.get("usage"))
        model = response.get("model") if isinstance(response.get("model"), str) else self.model
        rid = response.get("id") if isinstance(response.get("id"), str) else None
        if usage is None:
            return []
        return self.once(Billed(usage, model or self.model, rid, truncated=event.get("type") == "response.incomplete"))


def live_usage(raw: object) -> Usage | None:
    """Gemini Live's usageMetadata: generateContent's fields with `responseTokenCount` for the candidates, and
    per-modality lists whose AUDIO entries are the audio shares."""
    if not isinstance(raw, dict):
        return None
    base = gemini_usage({**raw, "candidatesTokenCount": raw.get("responseTokenCount", raw.get("candidatesTokenCount"))})
    assert base is not None

    def audio(key: str) -> int:
        return sum(as_int(d.get("tokenCount")) for d in as_list(raw.get(key))
                   if isinstance(d, dict) and d.get("modality") == "AUDIO")

    return base.model_copy(update={"input_audio_tokens": audio("promptTokensDetails"),
                                   "cached_input_audio_tokens": audio("cacheTokensDetails"),
                                   "output_audio_tokens": audio("responseTokensDetails")})


class LiveMeter(Meter):
    def __init__(self, model: str = "", operation: str = "live") -> None:
        super().__init__(model, operation)
        self.pending: Usage | None = None  # the turn's last usageMetadata, not billed yet
        self.turn_done = False
        self.turns = 0

    def client(self, data: str | bytes) -> None:
        if self.model or not _has(data, '"setup"'):
            return
        raw = as_dict(as_dict(load(data)).get("setup")).get("model")
        if isinstance(raw, str) and raw:
            self.model = raw.removeprefix("models/")

    def upstream(self, data: str | bytes) -> list[Billed]:
        if not _has(data, "usageMetadata", "turnComplete"):
            return []
        message = load(data)
        if message is None:
            return []
        usage = live_usage(message.get("usageMetadata"))
        if usage is not None:
            self.pending = usage
        if as_dict(message.get("serverContent")).get("turnComplete") is True:
            self.turn_done = True
        if self.turn_done and self.pending is not None:
            return self._bill(truncated=False)
        return []

    def end(self) -> list[Billed]:
        return self._bill(truncated=True) if self.pending is not None else []

    def _bill(self, truncated: bool) -> list[Billed]:
        assert self.pending is not None
        billed = Billed(self.pending, self.model, truncated=truncated)
        self.pending, self.turn_done = None, False
        self.turns += 1
        return [billed] if billed.usage.reported else []


def meter_for(dialect: str, path: str, query: MultiMapping[str]) -> Meter | None:
    """The meter of a session on `path` (relative to the upstream), or None: a route whose messages report no
    usage we know (recorded once as `unmetered`, refused under `unmeteredRoutes: Deny`)."""
    if dialect in ("openai", "azure"):
        if REALTIME.match(path):
            return RealtimeMeter(query.get("model") or query.get("deployment") or "", "realtime")
        if RESPONSES.match(path):
            return ResponsesMeter(query.get("model") or "", "responses")
    if dialect == "gemini" and LIVE.match(path):
        return LiveMeter()
    return None


__all__ = ["Billed", "LiveMeter", "Meter", "RealtimeMeter", "ResponsesMeter", "live_usage", "meter_for",
           "realtime_usage"]
