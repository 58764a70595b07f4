"""An injected sidecar waits for the operator's first push before it is ready, and counts what it serves
without one (issue 13 part 3).

The webhook sets TOKENBUDGET_AWAIT_POLICY_S and points the native sidecar's startupProbe at /readyz, so the
app starts only once the pod's policy (and its first grants) are in force. If the operator does not come in
time, the sidecar serves (or, Closed, refuses) and marks each record `awaiting_policy`; the first push counts
those in its budgets' windows, and the operator counts them against the budgets that select the pod.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, http_get, http_post, stack

from tokenbudget_sidecar.settings import Settings

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]
BUDGET = {"namespace": "team", "name": "daily", "spec": {
    "selector": {}, "limits": [{"name": "day", "period": "Day", "tokens": 100_000}]}}


def readyz(s: Stack) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{s.admin}/readyz", timeout=5) as resp:  # loopback only
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def push(s: Stack, **extra: Any) -> None:
    policy = s.state.policy.model_dump(mode="json", by_alias=True)
    policy.update(version="pushed", budgets=[BUDGET], **extra)
    assert json.loads(http_post(f"{s.admin}/policy", policy, method="PUT"))["changed"] is True


def client(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)


def test_unready_until_the_first_push_then_ready() -> None:
    with stack(Settings(data_port=0, admin_port=0, await_policy_s=30)) as s:
        status, body = readyz(s)
        assert status == 503
        assert any("waiting for the operator's first policy push" in d for d in body["detail"]), body
        assert s.state.metrics.registry.get_sample_value("tokenbudget_ready") == 0  # what /readyz says
        push(s)
        status, body = readyz(s)
        assert (status, body["ready"], body["policyVersion"]) == (200, True, "pushed")
        assert s.state.metrics.registry.get_sample_value("tokenbudget_ready") == 1


def test_a_call_during_the_wait_is_held_until_the_push_and_counts_in_its_budget() -> None:
    with stack(Settings(data_port=0, admin_port=0, await_policy_s=30)) as s:
        pusher = threading.Thread(target=lambda: (time.sleep(0.5), push(s)))
        pusher.start()
        began = time.monotonic()
        client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
        held = time.monotonic() - began
        pusher.join()
        (record,) = s.records(1)
    assert held >= 0.4, "served before the policy arrived"
    assert record.budgets == ["team/daily"]
    assert record.awaiting_policy is False


def test_after_the_wait_calls_are_served_marked_and_counted_once_the_policy_comes() -> None:
    with stack(Settings(data_port=0, admin_port=0, await_policy_s=0.3)) as s:
        time.sleep(0.4)
        status, body = readyz(s)
        assert status == 200
        assert any("no policy pushed after 0.3 s" in d for d in body["detail"]), body
        done = client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
        (record,) = s.records(1)
        assert record.awaiting_policy is True
        assert record.budgets == []
        push(s)  # the record is not acknowledged yet: the new budget's window counts it
        (budget,) = json.loads(http_get(f"{s.admin}/budgets"))["budgets"]
    assert done.usage is not None
    assert int(budget["windows"][0]["used"]) == done.usage.total_tokens


def test_closed_refuses_in_the_providers_shape_until_a_policy_comes() -> None:
    settings = Settings(data_port=0, admin_port=0, await_policy_s=0.2, pending_fail_mode="Closed")
    with stack(settings) as s:
        with pytest.raises(openai.InternalServerError) as refused:
            client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
        assert refused.value.status_code == 503
        assert "no budget policy from the operator yet" in refused.value.message
        push(s)
        client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=20)
