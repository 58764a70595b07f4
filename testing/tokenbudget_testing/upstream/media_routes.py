"""OpenAI images and audio, as the API answers them (docs/wire-formats.md, "Images and audio").

- ``POST /v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart: ``image`` or ``image[]`` files,
  ``prompt``, ``model``...): ``{"created", "data": [{"b64_json"} or {"url"}], "usage"?}``. gpt-image-* models
  report ``usage`` {input_tokens, input_tokens_details{text_tokens, image_tokens}, output_tokens, total_tokens}
  (gpt-image-1.5 and -mini add ``output_tokens_details{image_tokens, text_tokens}``); dall-e-2/3 (the default
  model is dall-e-2) report none. Output tokens per image follow OpenAI's quality x size table (``auto`` is
  medium 1024x1024 here). ``stream: true`` (gpt-image-* only): SSE ``image_generation.partial_image`` (as many as
  ``partial_images``) then one ``image_generation.completed`` per image, each with that image's usage (edits:
  ``image_edit.*``). Input image tokens are a stand-in: ``IMAGE_INPUT_TOKENS`` per uploaded image.
- ``POST /v1/audio/transcriptions`` (multipart: ``file``, ``model``, ``response_format``, ``stream``...):
  gpt-4o-*transcribe: ``{"text", "usage": {"type": "tokens", input_tokens, output_tokens, total_tokens,
  input_token_details{text_tokens, audio_tokens}}}``; whisper-1: ``{"text", "usage": {"type": "duration",
  "seconds"}}`` (verbose_json adds task, language, duration, segments); ``text``/``srt``/``vtt`` answer plain
  text with no usage. ``stream=true`` (gpt-4o-*): SSE ``transcript.text.delta`` then ``transcript.text.done``
  with the usage. The audio is taken as 16 kHz 16-bit mono: seconds = bytes / 32000 (billed rounded up);
  audio tokens = bytes // ``AUDIO_BYTES_PER_TOKEN``; the transcript is ``x-upstream-output-tokens`` words.
- ``POST /v1/audio/speech`` (JSON ``model``, ``input``, ``voice``): audio bytes (``audio/mpeg``), no usage.
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any

from aiohttp import web

from . import sse
from .call import Call, Frame, UpstreamError
from .dialect import require_object
from .tokens import answer_words, count_text, group

IMAGE_TOKENS = {"low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
                "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
                "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208}}
IMAGE_INPUT_TOKENS = 194  # per uploaded image: a stand-in figure (the API's depends on size and fidelity)
AUDIO_BYTES_PER_TOKEN = 320
AUDIO_BYTES_PER_SECOND = 32000
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def image_output_tokens(quality: str, size: str) -> int:
    by_size = IMAGE_TOKENS.get(quality if quality in IMAGE_TOKENS else "medium", {})
    return by_size.get(size, by_size["1024x1024"])


def _files(body: dict[str, Any], *names: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name in names:
        value = body.get(name)
        found += value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    return found


async def images(call: Call, raw: Any, edit: bool) -> web.StreamResponse:
    """``/v1/images/generations`` and ``/v1/images/edits``."""
    body = require_object(raw)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise UpstreamError(400, "Missing required parameter: 'prompt'.", param="prompt")
    model = str(body.get("model") or "dall-e-2")
    uploads = _files(body, "image", "image[]") if edit else []
    if edit and not uploads:
        raise UpstreamError(400, "Missing required parameter: 'image'.", param="image")
    n = int(str(body.get("n") or 1))
    stream = body.get("stream") in (True, "true")
    gpt_image = model.startswith("gpt-image")
    if stream and not gpt_image:
        raise UpstreamError(400, f"Streaming is not supported for model {model}.", param="stream")
    text_tokens = count_text(prompt)
    image_in = IMAGE_INPUT_TOKENS * len(uploads)
    per_image = image_output_tokens(str(body.get("quality") or "auto"), str(body.get("size") or "auto"))

    def usage(images_out: int) -> dict[str, Any]:
        out: dict[str, Any] = {"input_tokens": text_tokens + image_in,
                               "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_in},
                               "output_tokens": per_image * images_out,
                               "total_tokens": text_tokens + image_in + per_image * images_out}
        if model != "gpt-image-1":
            out["output_tokens_details"] = {"image_tokens": per_image * images_out, "text_tokens": 0}
        return out

    if gpt_image:
        call.note(input_tokens=text_tokens + image_in, input_image_tokens=image_in, output_tokens=per_image * n,
                  finish_reason="completed")
    created = int(time.time())
    if not stream:
        item = {"b64_json": PNG} if gpt_image or body.get("response_format") == "b64_json" else {
            "url": f"https://images.example/{call.request_id}.png"}
        payload: dict[str, Any] = {"created": created, "data": [dict(item) for _ in range(n)]}
        if not gpt_image and model == "dall-e-3":
            for entry in payload["data"]:
                entry["revised_prompt"] = prompt
        if gpt_image:
            payload.update(background="opaque", output_format="png", quality="medium", size="1024x1024",
                           usage=usage(n))
        return await call.send_json(payload, output_tokens=per_image * n if gpt_image else 0,
                                    usage_sent=gpt_image)
    kind = "image_edit" if edit else "image_generation"
    common = {"background": "opaque", "created_at": created, "output_format": "png", "quality": "medium",
              "size": "1024x1024"}
    frames: list[Frame] = []
    partials = int(str(body.get("partial_images") or 0))
    for _ in range(n):
        frames += [Frame(sse.named_event(f"{kind}.partial_image", {
            "type": f"{kind}.partial_image", "b64_json": PNG, "partial_image_index": i, **common}),
            paced=True, content=True) for i in range(partials)]
        frames.append(Frame(sse.named_event(f"{kind}.completed", {
            "type": f"{kind}.completed", "b64_json": PNG, **common, "usage": usage(1)}),
            per_image, content=True, final_usage=True))
    return await call.send_stream(frames, content_type="text/event-stream; charset=utf-8")


async def transcriptions(call: Call, raw: Any) -> web.StreamResponse:
    """``/v1/audio/transcriptions``."""
    body = require_object(raw)
    uploads = _files(body, "file")
    if not uploads:
        raise UpstreamError(400, "Missing required parameter: 'file'.", param="file")
    model = str(body.get("model") or "")
    if not model:
        raise UpstreamError(400, "Missing required parameter: 'model'.", param="model")
    size = int(uploads[0]["bytes"])
    fmt = str(body.get("response_format") or "json")
    stream = body.get("stream") == "true"
    whisper = model.startswith("whisper")
    if stream and whisper:
        raise UpstreamError(400, "Streaming is not supported for the whisper-1 model.", param="stream")
    words = answer_words(call.ctl.output_tokens)
    text = "".join(words)
    text_in = count_text(str(body.get("prompt") or "")) if body.get("prompt") else 0
    audio_in = max(size // AUDIO_BYTES_PER_TOKEN, 1)
    seconds = max(math.ceil(size / AUDIO_BYTES_PER_SECOND), 1)
    plain = fmt in ("text", "srt", "vtt")
    if whisper:
        usage: dict[str, Any] = {"type": "duration", "seconds": seconds}
        call.note(audio_seconds=seconds, finish_reason="completed")
    else:
        usage = {"type": "tokens", "input_tokens": text_in + audio_in, "output_tokens": len(words),
                 "total_tokens": text_in + audio_in + len(words),
                 "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in}}
        call.note(input_tokens=text_in + audio_in, input_audio_tokens=audio_in, output_tokens=len(words),
                  finish_reason="completed")
    if stream:
        frames = [Frame(sse.data_event({"type": "transcript.text.delta", "delta": delta}), tokens, paced=True,
                        content=True) for delta, tokens in group(words, call.ctl.chunk_tokens)]
        frames.append(Frame(sse.data_event({"type": "transcript.text.done", "text": text, "usage": usage}),
                            final_usage=True))
        return await call.send_stream(frames, content_type="text/event-stream; charset=utf-8")
    if plain:
        resp = web.Response(text=text + "\n", content_type="text/plain", headers={"x-upstream-request-id":
                                                                                  call.request_id})
        call.note(status=200, completed=True, emitted_output_tokens=len(words))
        return resp
    payload: dict[str, Any] = {"text": text, "usage": usage}
    if fmt == "verbose_json":
        payload = {"task": "transcribe", "language": "english", "duration": float(seconds), "text": text,
                   "segments": [], "usage": usage}
    return await call.send_json(payload, output_tokens=len(words), usage_sent=True)


async def speech(call: Call, raw: Any) -> web.StreamResponse:
    """``/v1/audio/speech``: bytes of audio, one per input character here; no usage on the wire."""
    body = require_object(raw)
    text = body.get("input")
    if not isinstance(text, str) or not body.get("voice"):
        raise UpstreamError(400, "Missing required parameter: 'input' or 'voice'.", param="input")
    call.note(input_tokens=count_text(text), status=200, completed=True, finish_reason="completed")
    return web.Response(body=b"ID3" + bytes(len(text)), content_type="audio/mpeg",
                        headers={"x-upstream-request-id": call.request_id})
