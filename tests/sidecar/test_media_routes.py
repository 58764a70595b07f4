"""OpenAI images and audio through the sidecar (issue 14, part 1): metered where the answer reports usage
(gpt-image-*, gpt-4o-*transcribe, whisper-1's seconds), recorded unmetered where it reports none (dall-e,
whisper's text formats, speech), priced from the catalog's image and audio prices.

Driven by the openai SDK against the test upstream (testing/tokenbudget_testing/upstream/media_routes.py).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.prices import catalog_price
from tokenbudget_api.usage import Outcome, Usage, UsageSource
from tokenbudget_sidecar.pricing import catalog_cost

OPENAI = "https://api.openai.com/v1"
AUDIO = b"RIFF" + bytes(95_996)  # 3 s of 16 kHz 16-bit mono as the test upstream reads it


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack() as st:
        yield st


@pytest.fixture(autouse=True)
def _clean(s: Stack) -> None:
    s.reset()


def oa(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)


def catalog(model: str, usage: Usage) -> Decimal:
    price = catalog_price(model, OPENAI)
    assert price is not None
    return catalog_cost(price, usage)


def unmetered_count(s: Stack, route: str) -> float:
    for line in http_get(f"{s.admin}/metrics").splitlines():
        if line.startswith("tokenbudget_unmetered_calls_total{") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gpt_image_generation_is_metered_and_priced_at_the_image_output_price(s: Stack) -> None:
    out = oa(s).images.generate(model="gpt-image-1", prompt="a lighthouse at dusk", n=2, quality="high",
                                size="1024x1536")
    assert out.usage is not None
    assert out.data is not None
    assert len(out.data) == 2
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert (rec.operation, rec.source, rec.route) == ("images", UsageSource.PROVIDER, "POST /v1/images/generations")
    assert rec.usage.input_tokens == out.usage.input_tokens == served.input_tokens
    assert rec.usage.output_tokens == out.usage.output_tokens == served.output_tokens == 2 * 6240
    assert rec.usage.output_image_tokens == rec.usage.output_tokens, "gpt-image-1 gives no breakdown: all image"
    assert rec.cost_usd == catalog("gpt-image-1", rec.usage)
    assert rec.cost_usd > Decimal(rec.usage.output_tokens) * Decimal("39") / 1_000_000, "image output is $40/M"


def test_an_image_edit_upload_is_metered_with_its_image_input_tokens(s: Stack) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 200
    out = oa(s).images.edit(model="gpt-image-1", image=[("a.png", io.BytesIO(png), "image/png"),
                                                        ("b.png", io.BytesIO(png), "image/png")],
                            prompt="make the sky green")
    assert out.usage is not None
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert served.request_body["image[]"][0]["bytes"] == len(png), "the upload reached the provider whole"
    assert rec.operation == "images"
    assert rec.usage.input_image_tokens == served.input_image_tokens == out.usage.input_tokens_details.image_tokens
    assert rec.usage.input_tokens == served.input_tokens
    assert rec.cost_usd == catalog("gpt-image-1", rec.usage)
    assert rec.cost_usd != catalog("gpt-image-1", rec.usage.model_copy(update={"input_image_tokens": 0})), \
        "image input is priced apart from text"


def test_a_streamed_image_generation_sums_each_completed_images_usage(s: Stack) -> None:
    events = list(oa(s).images.generate(model="gpt-image-1-mini", prompt="a fox", n=2, partial_images=1,
                                        quality="low", size="1024x1024", stream=True))
    kinds = [e.type for e in events]
    assert kinds.count("image_generation.completed") == 2
    assert kinds.count("image_generation.partial_image") == 2
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert rec.stream
    assert not rec.truncated
    assert rec.usage.output_tokens == served.output_tokens == 2 * 272
    assert rec.usage.input_tokens == served.input_tokens, "each event's input counted once per image"
    assert rec.cost_usd == catalog("gpt-image-1-mini", rec.usage)


@pytest.mark.parametrize("model", ["dall-e-3", None])
def test_dall_e_reports_no_usage_and_is_recorded_unmetered_never_at_zero_dollars(s: Stack, model: str | None) -> None:
    before = unmetered_count(s, "POST /v1/images/generations")
    kwargs = {"model": model} if model else {}
    out = oa(s).images.generate(prompt="a red square", **kwargs)  # type: ignore[arg-type]
    assert out.usage is None
    (rec,) = s.records(1)
    assert rec.model == (model or "dall-e-2"), "the API's default model when none is named"
    assert (rec.source, rec.outcome, rec.route) == (UsageSource.UNMETERED, Outcome.OK, "POST /v1/images/generations")
    assert rec.usage.total_tokens == 0
    assert rec.cost_usd is None
    assert unmetered_count(s, "POST /v1/images/generations") == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_gpt_4o_transcription_is_metered_with_audio_tokens(s: Stack, stream: bool) -> None:
    headers = {"x-upstream-output-tokens": "12"}
    file = ("speech.wav", io.BytesIO(AUDIO), "audio/wav")
    if stream:
        events = list(oa(s).audio.transcriptions.create(model="gpt-4o-transcribe", file=file, stream=True,
                                                        extra_headers=headers))
        assert events[-1].type == "transcript.text.done"
        text = events[-1].text
    else:
        out = oa(s).audio.transcriptions.create(model="gpt-4o-transcribe", file=file, prompt="a weather report",
                                                extra_headers=headers)
        text = out.text
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert text
    assert (rec.operation, rec.source, rec.stream) == ("transcriptions", UsageSource.PROVIDER, stream)
    assert (rec.usage.input_tokens, rec.usage.input_audio_tokens, rec.usage.output_tokens) == (
        served.input_tokens, served.input_audio_tokens, served.output_tokens)
    assert rec.usage.output_tokens == 12
    assert rec.cost_usd == catalog("gpt-4o-transcribe", rec.usage)
    assert rec.cost_usd > catalog("gpt-4o-transcribe", rec.usage.model_copy(update={"input_audio_tokens": 0})), \
        "audio input costs more than text"


@pytest.mark.parametrize("fmt", ["json", "verbose_json"])
def test_whisper_bills_by_the_second_and_is_priced_so(s: Stack, fmt: str) -> None:
    oa(s).audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(AUDIO)),
                                      response_format=fmt)  # type: ignore[call-overload]
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert rec.source is UsageSource.PROVIDER
    assert rec.usage.audio_seconds == served.audio_seconds == 3
    assert rec.usage.total_tokens == 0
    assert rec.cost_usd == Decimal("0.0003"), "$0.006 a minute"


def test_plain_text_transcripts_and_speech_report_nothing_and_are_recorded_unmetered(s: Stack) -> None:
    text = oa(s).audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(AUDIO)),
                                             response_format="text")
    assert isinstance(text, str)
    assert text
    speech = oa(s).audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello there")
    assert speech.content.startswith(b"ID3")
    transcript, spoken = s.records(2)
    assert (transcript.operation, transcript.source) == ("transcriptions", UsageSource.UNMETERED)
    assert transcript.cost_usd is None
    assert (spoken.operation, spoken.source, spoken.route) == ("unmetered", UsageSource.UNMETERED,
                                                               "POST /v1/audio/speech")


def test_a_downgrade_rewrites_only_the_model_field_of_a_multipart_form() -> None:
    budget = {"namespace": "team", "name": "img", "generation": 1, "spec": {
        "selector": {}, "limits": [{"name": "day", "period": "Day", "tokens": 100_000}],
        "ladder": [{"at": 1, "action": "Downgrade", "modelMap": {"gpt-image-1": "gpt-image-1-mini"}}]}}
    png = bytes(range(256)) * 50
    with stack(budgets=[budget]) as st:
        client = openai.OpenAI(base_url=st.openai_url, api_key="sk-test", max_retries=0)
        client.images.generate(model="gpt-image-1", prompt="a cat")  # 1056 output tokens: past 1 %
        client.images.edit(model="gpt-image-1", image=("a.png", io.BytesIO(png), "image/png"), prompt="blue")
        first, rec = st.records(2)
        _, served = st.ledger.wait_finished(2)
    assert first.model == "gpt-image-1"
    assert served.model == rec.model == "gpt-image-1-mini"
    assert served.request_body["image"]["bytes"] == len(png)
    assert served.request_body["prompt"] == "blue"
    assert rec.decisions == ["team/img:Downgrade"]
