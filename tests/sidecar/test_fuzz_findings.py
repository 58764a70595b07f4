"""What `make fuzz` found, kept as tests: a provider answer of an odd shape is read as what it says, never
an exception, and a policy push that is not UTF-8 is a 400, not a 500.

A reader that raised on the provider's answer broke the call after the provider had billed it: the app got
a 500 (or a cut stream) and the record lost the streamed text its estimate needs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from sidecar_harness import stack

from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_sidecar.dialects import DIALECTS, Call
from tokenbudget_sidecar.dialects import openai as openai_dialect
from tokenbudget_sidecar.sse import Event

# (dialect, operation, a body or stream chunk whose inner fields have the wrong JSON type)
ODD: list[tuple[DialectName, str, dict[str, Any]]] = [
    (DialectName.GEMINI, "generate", {"candidates": 2, "usageMetadata": {"promptTokenCount": 3}}),
    (DialectName.GEMINI, "generate", {"candidates": [{"content": [], "finishReason": "STOP"}]}),
    (DialectName.GEMINI, "generate", {"candidates": [{"content": {"parts": "text"}}]}),
    (DialectName.OPENAI, "chat", {"choices": 2, "usage": {"prompt_tokens": 1}}),
    (DialectName.OPENAI, "chat", {"choices": [{"delta": "x"}], "usage": {"prompt_tokens_details": [1]}}),
    (DialectName.OPENAI, "chat", {"usage": {"prompt_tokens": 1, "completion_tokens_details": "x"}}),
    (DialectName.OPENAI, "responses", {"type": "response.completed", "response": "x", "output": 3}),
    (DialectName.OPENAI, "responses", {"type": "response.completed", "response": {"usage": [1]}}),
    (DialectName.ANTHROPIC, "messages", {"type": "message_start", "message": "x"}),
    (DialectName.ANTHROPIC, "messages", {"type": "message_delta", "delta": [], "usage": {"output_tokens": 2}}),
    (DialectName.ANTHROPIC, "messages", {"type": "content_block_delta", "delta": "x", "content": 1}),
    (DialectName.ANTHROPIC, "messages", {"usage": {"output_tokens_details": [1]}, "content": {"a": 1}}),
]


@pytest.mark.parametrize(("name", "operation", "body"), ODD, ids=lambda v: json.dumps(v)[:60])
def test_an_odd_provider_answer_is_read_without_an_exception(name: DialectName, operation: str,
                                                              body: dict[str, Any]) -> None:
    dialect = DIALECTS[name]
    whole = dialect.read_response(Call(operation, "m"), body)
    assert whole.finished
    tracker = dialect.tracker(Call(operation, "m", stream=True))
    assert tracker.on_event(Event("", json.dumps(body), b"")) is True
    for reading in (whole, tracker.reading):
        assert reading.usage is None or reading.usage.total_tokens >= 0


def test_usage_with_details_of_the_wrong_type_keeps_the_counts() -> None:
    usage = openai_dialect.usage_of({"prompt_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": [1],
                                     "completion_tokens_details": "x"})
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens) == (7, 2, 0)


def test_a_policy_push_that_is_not_utf8_is_a_400() -> None:
    with stack() as s:
        req = urllib.request.Request(f"{s.admin}/policy", data=b'{"version": "\xe5x"}', method="PUT",
                                     headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)  # loopback only
        assert err.value.code == 400
        assert "not valid JSON" in json.loads(err.value.read())["error"]


def test_a_thinking_rewrite_of_a_request_whose_messages_are_not_a_list_raises_nothing() -> None:
    import yaml

    from tokenbudget_api.policy import SidecarPolicy
    from tokenbudget_sidecar.thinking import Thinking

    doc = yaml.safe_load(open("examples/thinktier.yaml", encoding="utf-8").read())  # noqa: SIM115
    doc["spec"]["defaultTier"] = "standard"
    thinking = Thinking(SidecarPolicy.model_validate({"thinkTiers": [{"name": "t", "spec": doc["spec"]}]}))
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": 5}
    call = DIALECTS[DialectName.ANTHROPIC].parse("messages", "/v1/messages", body, None)
    decision = thinking.apply(DIALECTS[DialectName.ANTHROPIC], call, body, "/anthropic/v1/messages", {}, 10)
    assert decision is not None
    assert body["thinking"]["type"] == "enabled"  # no tool loop in a history that is not a list


@pytest.mark.parametrize("kind", [["image"], {"a": 1}])
def test_a_content_part_whose_type_is_not_a_string_is_counted_not_a_500(kind: Any) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 5,
            "messages": [{"role": "user", "content": [{"type": kind, "text": "hello"}]}]}
    for name in (DialectName.ANTHROPIC, DialectName.OPENAI, DialectName.AZURE_OPENAI):  # those with `messages`
        prompt = DIALECTS[name].prompt(body)
        assert "hello" in prompt.texts  # not a media part: its text is counted
    with stack() as s:
        req = urllib.request.Request(f"{s.sidecar}/anthropic/v1/messages", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json"})
        try:
            status = urllib.request.urlopen(req, timeout=10).status  # loopback only
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status < 500


def test_an_adaptive_thinking_effort_that_is_not_a_string_is_replaced_not_a_typeerror() -> None:
    import yaml

    from tokenbudget_api.policy import SidecarPolicy
    from tokenbudget_sidecar.thinking import Thinking

    doc = yaml.safe_load(open("examples/thinktier.yaml", encoding="utf-8").read())  # noqa: SIM115
    doc["spec"]["defaultTier"] = "standard"
    thinking = Thinking(SidecarPolicy.model_validate({"thinkTiers": [{"name": "t", "spec": doc["spec"]}]}))
    body: dict[str, Any] = {"model": "claude-opus-4-7", "max_tokens": 4000, "output_config": {"effort": ["max"]},
                            "messages": [{"role": "user", "content": "hi"}]}
    call = DIALECTS[DialectName.ANTHROPIC].parse("messages", "/v1/messages", body, None)
    thinking.apply(DIALECTS[DialectName.ANTHROPIC], call, body, "/anthropic/v1/messages", {}, 10)
    assert isinstance(body["output_config"]["effort"], str)  # the tier's effort replaced what no API accepts


@pytest.mark.parametrize("name", list(DialectName))
def test_a_stream_event_nested_past_the_recursion_limit_is_kept_and_read_as_nothing(name: DialectName) -> None:
    """A `data:` line nested 100,000 levels deep raised RecursionError out of the relay (found by review):
    the event is relayed like any other and reads as no usage, as an answer that is not JSON does."""
    dialect = DIALECTS[name]
    operation = {"OpenAI": "chat", "Anthropic": "messages", "Gemini": "generate"}.get(name.value, "chat")
    tracker = dialect.tracker(Call(operation, "m", stream=True))
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    assert tracker.on_event(Event("", deep, b"")) is True
    assert tracker.reading.usage is None
