"""OpenAI images and audio transcriptions: what their answers report, whole or streamed.

Wire facts (docs/wire-formats.md, "Images and audio"):

- `POST /v1/images/generations` (JSON) and `/v1/images/edits` (multipart): gpt-image-* answers carry `usage`
  {input_tokens, input_tokens_details{text_tokens, image_tokens}, output_tokens, total_tokens,
  output_tokens_details?{image_tokens, text_tokens}}; dall-e-2/3 answers carry none (billed per image: the
  record is `unmetered`). Streams (`stream: true`, gpt-image-* only) are SSE of `image_generation.partial_image`
  / `image_edit.partial_image` and one `*.completed` per image, each with that image's output and the prompt's
  input (per_image).
- `POST /v1/audio/transcriptions` (multipart): `usage` is {type: "tokens", input_tokens, output_tokens,
  total_tokens, input_token_details{text_tokens, audio_tokens}} (gpt-4o-*transcribe) or {type: "duration",
  seconds} (whisper-1). Text, srt and vtt answers are not JSON and carry nothing. Streams (gpt-4o-*transcribe,
  `stream=true` in the form) are SSE of `transcript.text.delta` then `transcript.text.done` with the usage.
"""

from __future__ import annotations

from typing import Any

from tokenbudget_api.usage import Usage
from tokenbudget_sidecar.dialects.base import JSON, Call, Reading, StreamTracker, as_int, load_json
from tokenbudget_sidecar.sse import Event

IMAGE_OPERATIONS = {"/v1/images/generations": "images", "/v1/images/edits": "images",
                    "/v1/audio/transcriptions": "transcriptions"}
DEFAULT_IMAGE_MODEL = "dall-e-2"  # the API's default when the body names none
# Output tokens of one gpt-image-1 image by quality and size (OpenAI's image generation guide); the hold
# for an image call is n times this, the largest figure when quality or size is auto or unknown.
IMAGE_TOKENS = {"low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
                "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
                "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208}}
MAX_IMAGE_TOKENS = 6240


def image_hold(body: JSON) -> int:
    """Output tokens to hold for an image call (a form sends numbers as text)."""
    try:
        n = max(int(str(body.get("n") or 1)), 1)
    except ValueError:
        n = 1
    by_size = IMAGE_TOKENS.get(str(body.get("quality")), {})
    per_image = by_size.get(str(body.get("size")), max(by_size.values(), default=MAX_IMAGE_TOKENS))
    return n * per_image


def is_streamed(body: JSON) -> bool:
    """JSON says `true`; a form says "true" (the SDK's multipart encoding of a boolean)."""
    value = body.get("stream")
    return value is True or (isinstance(value, str) and value.lower() == "true")


def media_usage(raw: Any) -> Usage | None:
    """Images' and transcriptions' usage, normalized (the media shares as subsets of the totals)."""
    if not isinstance(raw, dict):
        return None
    if raw.get("type") == "duration":
        seconds = raw.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0:
            return Usage(audio_seconds=float(seconds))
        return None
    in_details = raw.get("input_tokens_details") or raw.get("input_token_details") or {}
    out_details = raw.get("output_tokens_details")
    output = as_int(raw.get("output_tokens"))
    image_out = as_int(out_details.get("image_tokens")) if isinstance(out_details, dict) else output
    return Usage(input_tokens=as_int(raw.get("input_tokens")), output_tokens=output,
                 input_image_tokens=as_int(in_details.get("image_tokens")),
                 input_audio_tokens=as_int(in_details.get("audio_tokens")),
                 output_image_tokens=image_out if raw.get("type") != "tokens" else 0)


INPUT_FIELDS = ("input_tokens", "cached_input_tokens", "cache_creation_input_tokens", "input_image_tokens",
                "input_audio_tokens")


def per_image(a: Usage | None, b: Usage) -> Usage:
    """Two images' completed events of one stream: the prompt is read once (each event repeats it, so the
    larger figure), the output is each image's own (summed). The API reference does not say more for n > 1."""
    if a is None:
        return b
    return Usage(**{k: max(getattr(a, k), getattr(b, k)) if k in INPUT_FIELDS else getattr(a, k) + getattr(b, k)
                    for k in Usage.model_fields})


def read_media(call: Call, body: JSON) -> Reading:
    reading = Reading(usage=media_usage(body.get("usage")), finished=True)
    if call.operation == "transcriptions" and isinstance(body.get("text"), str):
        reading.text.append(body["text"])
        reading.answer_text.append(body["text"])
    return reading


class MediaTracker(StreamTracker):
    """Image and transcription streams: usage from each completed image (summed) or the transcript's end."""

    IMAGE_DONE = ("image_generation.completed", "image_edit.completed")

    def on_event(self, event: Event) -> bool:
        r = self.reading
        data = load_json(event.data)
        if data is None:
            return True
        kind = data.get("type", event.event)
        if kind == "transcript.text.delta" and isinstance(data.get("delta"), str):
            r.text.append(data["delta"])
            r.answer_text.append(data["delta"])
        elif kind == "transcript.text.done":
            r.usage = media_usage(data.get("usage")) or r.usage
            r.finished = True
        elif kind in self.IMAGE_DONE:
            usage = media_usage(data.get("usage"))
            if usage is not None:
                r.usage = per_image(r.usage, usage)
            r.finished = True
        elif kind == "error" or "error" in data:
            r.error = True
        return True
