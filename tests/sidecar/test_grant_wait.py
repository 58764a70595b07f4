"""A pod whose grant is spent while the budget has room waits for the next push, not for the app's retry.

Seen on the real node: one fast pod got 429s at 67-88 % of its budget, each saying "come back in a lease
round", because it spent each grant faster than the operator's rounds refilled it. The refusal was true of the
pod but not of the budget. Now the call waits (at most `grant_wait_s`) for the operator's next policy push and
goes through on the new grant; without a push in time it is the same 429 as before.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, http_post, stack

from tokenbudget_sidecar.settings import Settings

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello."}]


def budget_with_grant(granted: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {"name": "team", "namespace": "ns", "spec": {
        "selector": {}, "timeZone": "UTC", "limits": [{"name": "day", "period": "Day", "tokens": 100_000}]},
        "leases": [{"window": "day", "granted": str(granted), "periodStart": start.isoformat(),
                    "expiresAt": (now + dt.timedelta(minutes=5)).isoformat(),
                    "fleetUsed": "0", "ownUsed": "0"}]}


def starved(s: Stack) -> float | None:
    """tokenbudget_lease_starved_calls_total of the budget: 429s for want of a grant the budget had room for."""
    return s.state.metrics.registry.get_sample_value("tokenbudget_lease_starved_calls_total", {"budget": "ns/team"})


def client(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)


def spend_the_grant(s: Stack) -> None:
    """One call of about 170 reserved tokens (about 130 used) fits a 200-token grant; a second one cannot."""
    client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150,
                                      extra_headers={"x-upstream-output-tokens": "120"})
    s.records(1)


def push_bigger_grant_after(s: Stack, delay_s: float) -> threading.Thread:
    def push() -> None:
        time.sleep(delay_s)
        policy = s.state.policy.model_dump(mode="json", by_alias=True)
        policy["version"] = "with-more"
        policy["budgets"] = [budget_with_grant(10_000)]
        assert json.loads(http_post(f"{s.admin}/policy", policy, method="PUT"))["changed"] is True

    thread = threading.Thread(target=push)
    thread.start()
    return thread


def test_a_call_waits_for_the_next_grant_instead_of_refusing_while_the_budget_has_room() -> None:
    settings = Settings(data_port=0, admin_port=0, grant_wait_s=5.0)
    with stack(settings, budgets=[budget_with_grant(200)]) as s:
        spend_the_grant(s)
        pusher = push_bigger_grant_after(s, 0.6)
        began = time.monotonic()
        raw = client(s).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES,
                                                                  max_tokens=150)
        waited = time.monotonic() - began
        pusher.join()
        assert raw.http_response.status_code == 200
        assert waited >= 0.5, "admitted before the new grant arrived: the first grant was not spent"
        (_first, second) = s.records(2)
        assert second.outcome.value == "ok"
        assert starved(s) == 0  # waited, never refused: the series exists at 0 from the policy on


def test_without_a_push_in_time_the_call_gets_the_lease_rounds_429() -> None:
    settings = Settings(data_port=0, admin_port=0, grant_wait_s=0.3)
    with stack(settings, budgets=[budget_with_grant(200)]) as s:
        spend_the_grant(s)
        began = time.monotonic()
        with pytest.raises(openai.RateLimitError) as refused:
            client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150)
        assert time.monotonic() - began >= 0.25, "refused without waiting for a grant"
        assert refused.value.response.headers["retry-after"] == "2"
        assert starved(s) == 1


def test_a_call_the_budget_itself_cannot_fit_is_refused_at_once() -> None:
    """Waiting helps only when the budget has room: a window that is spent is answered immediately."""
    settings = Settings(data_port=0, admin_port=0, grant_wait_s=5.0)
    spent = budget_with_grant(200)
    spent["spec"]["limits"][0]["tokens"] = 200
    with stack(settings, budgets=[spent]) as s:
        spend_the_grant(s)
        began = time.monotonic()
        with pytest.raises(openai.RateLimitError):
            client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150)
        assert time.monotonic() - began < 3.0, "waited for a grant the budget could never give"
        assert starved(s) == 0  # the budget itself is spent: not starvation


def test_after_a_wait_that_ran_out_the_next_call_short_of_the_grant_is_answered_at_once() -> None:
    """Near the end of a budget the operator's increments shrink below a call's size: the first call waits
    `grant_wait_s` for nothing, and the calls after it (an SDK's retries included) do not wait again."""
    settings = Settings(data_port=0, admin_port=0, grant_wait_s=1.0)
    with stack(settings, budgets=[budget_with_grant(200)]) as s:
        spend_the_grant(s)
        with pytest.raises(openai.RateLimitError) as first:
            client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150)
        assert "does not wait again" not in first.value.message
        # It speaks of this pod's grant and the budget's room, not of the period's end.
        assert "this pod's grant has 70 tokens left of 200 and this call may need 166; the budget has " \
            "99870 left" in first.value.message
        began = time.monotonic()
        with pytest.raises(openai.RateLimitError) as second:
            client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150)
        assert "no larger grant came in this pod's last wait of 1 s, so it does not wait again" in \
            second.value.message
        assert time.monotonic() - began < 0.9, "waited again"
        assert second.value.response.headers["retry-after"] == "2"
        assert starved(s) == 2
        # A push with room ends it at once: admission passes before the mark is looked at.
        push_bigger_grant_after(s, 0).join()
        client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150)


def test_the_mark_lasts_one_wait_then_a_call_waits_again() -> None:
    settings = Settings(data_port=0, admin_port=0, grant_wait_s=0.3)
    with stack(settings, budgets=[budget_with_grant(200)]) as s:
        spend_the_grant(s)
        with pytest.raises(openai.RateLimitError):
            client(s).chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=150)
        time.sleep(0.4)  # the mark (one grant_wait_s) is over
        pusher = push_bigger_grant_after(s, 0.1)
        raw = client(s).chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES,
                                                                  max_tokens=150)
        pusher.join()
        assert raw.http_response.status_code == 200, "did not wait for the grant once the mark was over"
