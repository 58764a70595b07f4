"""What a WebSocket session bills, read from its messages (ws_meters.py): one report per response or turn, never
two for one, the model from wherever the provider's protocol names it, and nothing read from messages that
cannot carry usage."""

from __future__ import annotations

import json

from multidict import MultiDict

from tokenbudget_api.usage import Usage
from tokenbudget_sidecar.ws_meters import LiveMeter, RealtimeMeter, ResponsesMeter, meter_for

REALTIME_USAGE = {"total_tokens": 260, "input_tokens": 200, "output_tokens": 60,
                  "input_token_details": {"text_tokens": 120, "audio_tokens": 80, "image_tokens": 0,
                                          "cached_tokens": 64, "cached_tokens_details": {"text_tokens": 32,
                                                                                         "audio_tokens": 32}},
                  "output_token_details": {"text_tokens": 10, "audio_tokens": 50}}


def done(rid: str, usage: object = REALTIME_USAGE) -> str:
    return json.dumps({"type": "response.done", "event_id": "e1", "response": {"id": rid, "usage": usage}})


def test_sessions_are_metered_by_the_path_they_open() -> None:
    none: MultiDict[str] = MultiDict()
    assert isinstance(meter_for("openai", "/v1/realtime", MultiDict(model="gpt-realtime")), RealtimeMeter)
    assert isinstance(meter_for("azure", "/openai/realtime", MultiDict(deployment="rt")), RealtimeMeter)
    assert isinstance(meter_for("openai", "/v1/responses", none), ResponsesMeter)
    assert isinstance(meter_for("gemini", "/ws/google.ai.generativelanguage.v1beta.GenerativeService."
                                "BidiGenerateContent", none), LiveMeter)
    assert meter_for("openai", "/v1/realtime/translations", none) is None
    assert meter_for("gemini", "/ws/google.ai.generativelanguage.v1.GenerativeService.BidiGenerateMusic", none) is None
    assert meter_for("anthropic", "/v1/realtime", none) is None
    azure = meter_for("azure", "/openai/realtime", MultiDict(deployment="my-rt"))
    assert azure is not None
    assert azure.model == "my-rt"


def test_a_realtime_response_done_is_one_report_with_its_audio_shares_and_never_two() -> None:
    meter = RealtimeMeter("gpt-realtime", "realtime")
    (billed,) = meter.upstream(done("resp_1"))
    assert billed.usage == Usage(input_tokens=200, cached_input_tokens=64, input_audio_tokens=80,
                                 cached_input_audio_tokens=32, output_tokens=60, output_audio_tokens=50)
    assert (billed.model, billed.response_id) == ("gpt-realtime", "resp_1")
    assert meter.upstream(done("resp_1")) == [], "the same response reported twice counts once"
    assert meter.upstream(done("resp_2", None)) == [], "a response.done without usage bills nothing we can see"
    assert meter.upstream('{"type": "response.done", "response": [') == []


def test_the_realtime_model_follows_the_session() -> None:
    meter = RealtimeMeter("", "realtime")
    meter.upstream(json.dumps({"type": "session.created", "session": {"model": "gpt-realtime-mini"}}))
    assert meter.upstream(done("r"))[0].model == "gpt-realtime-mini"
    meter.client(json.dumps({"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime"}}))
    assert meter.upstream(done("r2"))[0].model == "gpt-realtime"


def test_messages_that_cannot_carry_usage_are_not_decoded() -> None:
    meter = RealtimeMeter("gpt-realtime", "realtime")
    audio = '{"type": "response.output_audio.delta", "delta": "' + "A" * 100 + '"' + "{" * 50  # not even JSON
    assert meter.upstream(audio) == []


def test_responses_over_a_websocket_report_per_terminal_event() -> None:
    meter = ResponsesMeter("", "responses")
    meter.client(json.dumps({"type": "response.create", "model": "gpt-4o-mini", "input": "hi"}))
    usage = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 6,
             "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15}
    (billed,) = meter.upstream(json.dumps({"type": "response.incomplete", "response": {
        "id": "resp_a", "model": "gpt-4o-mini-2024-07-18", "usage": usage}}))
    assert (billed.model, billed.truncated, billed.usage.reasoning_tokens) == ("gpt-4o-mini-2024-07-18", True, 2)
    assert meter.upstream(json.dumps({"type": "response.output_text.delta", "delta": "usage"})) == []


def live_usage(prompt: int, response: int, audio_out: int = 0) -> dict[str, object]:
    details = [{"modality": "TEXT", "tokenCount": response - audio_out}]
    if audio_out:
        details.append({"modality": "AUDIO", "tokenCount": audio_out})
    return {"promptTokenCount": prompt, "responseTokenCount": response, "thoughtsTokenCount": 3,
            "totalTokenCount": prompt + response, "responseTokensDetails": details}


def test_a_gemini_turn_is_billed_once_with_its_last_figure_whether_usage_comes_before_or_after_turn_complete() -> None:
    meter = LiveMeter()
    meter.client(json.dumps({"setup": {"model": "models/gemini-live-2.5-flash-preview"}}))
    assert meter.upstream(json.dumps({"usageMetadata": live_usage(10, 1)})) == [], "mid-turn: a snapshot"
    (first,) = meter.upstream(json.dumps({"serverContent": {"turnComplete": True},
                                          "usageMetadata": live_usage(10, 40, audio_out=30)}).encode())
    assert first.usage == Usage(input_tokens=10, output_tokens=43, reasoning_tokens=3, output_audio_tokens=30)
    assert first.model == "gemini-live-2.5-flash-preview"
    assert meter.upstream(json.dumps({"serverContent": {"turnComplete": True}})) == []
    (second,) = meter.upstream(json.dumps({"usageMetadata": live_usage(60, 5)}))  # usage after turnComplete
    assert second.usage.input_tokens == 60
    assert meter.end() == []


def test_a_gemini_turn_cut_before_turn_complete_keeps_its_last_figure_flagged_truncated() -> None:
    meter = LiveMeter("gemini-live-2.5-flash-preview")
    meter.upstream(json.dumps({"usageMetadata": live_usage(10, 7)}))
    (cut,) = meter.end()
    assert (cut.truncated, cut.usage.output_tokens) == (True, 10)


def test_realtime_input_transcription_is_billed_to_the_transcription_model_once() -> None:
    meter = RealtimeMeter("gpt-realtime", "realtime")
    meter.client(json.dumps({"type": "session.update", "session": {
        "type": "realtime", "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}}}))
    event = {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1", "transcript": "hi",
             "usage": {"type": "tokens", "input_tokens": 30, "output_tokens": 2, "total_tokens": 32,
                       "input_token_details": {"text_tokens": 0, "audio_tokens": 30}}}
    (billed,) = meter.upstream(json.dumps(event))
    assert (billed.model, billed.operation, billed.response_id) == (
        "gpt-4o-mini-transcribe", "transcriptions", "item_1")
    assert billed.usage == Usage(input_tokens=30, input_audio_tokens=30, output_tokens=2)
    assert meter.upstream(json.dumps(event)) == []
    beta = RealtimeMeter("gpt-4o-realtime-preview", "realtime")
    beta.upstream(json.dumps({"type": "session.updated", "session": {"input_audio_transcription": {
        "model": "whisper-1"}}}))
    (seconds,) = beta.upstream(json.dumps({**event, "item_id": "item_2", "usage": {"type": "duration",
                                                                                    "seconds": 2.5}}))
    assert (seconds.model, seconds.usage) == ("whisper-1", Usage(audio_seconds=2.5))
