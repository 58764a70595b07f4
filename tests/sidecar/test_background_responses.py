"""Background Responses (issue 14, part 1): a create answered `queued` is settled once, by the first retrieve or
cancel that shows it ended, however often it is polled or streamed; a sidecar killed before that records it once
at its restart from the intent (background.py).

Driven by the openai SDK (`responses.create(background=True)`, `responses.retrieve`, `responses.cancel`) against
the test upstream (testing/tokenbudget_testing/upstream/responses_background.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, http_get, policy_for, stack
from sidecar_process import sidecar_process
from test_interrupted_calls import drain, windows

from tokenbudget_api.usage import UsageSource
from tokenbudget_testing.upstream.app import LEDGER, serve_in_thread
from tokenbudget_testing.upstream.app import create_app as create_upstream

BUDGET: dict[str, Any] = {"namespace": "team", "name": "bg", "generation": 1,
                          "spec": {"selector": {}, "limits": [{"name": "day", "duration": "24h", "tokens": 1_000_000}]}}
POLLS = {"x-upstream-background-polls": "3", "x-upstream-output-tokens": "40"}


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack(budgets=[BUDGET]) as st:
        yield st


@pytest.fixture(autouse=True)
def _clean(s: Stack) -> None:
    s.reset()


def oa(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)


def used(s: Stack) -> Decimal:
    (b,) = json.loads(http_get(f"{s.admin}/budgets"))["budgets"]
    return sum((Decimal(w["used"]) for w in b["windows"]), Decimal(0))  # a window appears with its first call


def test_a_background_response_is_settled_once_by_the_retrieve_that_shows_it_completed(s: Stack) -> None:
    client = oa(s.openai_url)
    before = used(s)
    created = client.responses.create(model="gpt-4o", input="Write a haiku.", background=True, extra_headers=POLLS)
    assert created.status == "queued"
    assert created.usage is None
    assert s.state.usage_log.all() == [], "nothing known yet: the settlement is deferred"
    assert used(s) == before, "the hold is released while the provider works"
    statuses = [client.responses.retrieve(created.id).status for _ in range(5)]
    assert statuses == ["in_progress", "in_progress", "completed", "completed", "completed"]
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert served.usage_sent
    assert rec.response_id == created.id == served.request_id
    assert rec.source is UsageSource.PROVIDER
    assert (rec.usage.input_tokens, rec.usage.output_tokens) == (served.input_tokens, served.output_tokens)
    assert rec.usage.output_tokens == 40
    assert rec.budgets == ["team/bg"]
    assert rec.cost_usd is not None
    assert len(s.state.usage_log.all()) == 1, "later retrieves are plain reads"
    assert used(s) == before + rec.usage.total_tokens, "counted in the budget once"


def test_a_streamed_retrieve_settles_it_and_later_retrieves_do_not_count_again(s: Stack) -> None:
    client = oa(s.openai_url)
    created = client.responses.create(model="gpt-4o", input="Hi", background=True, extra_headers=POLLS)
    events = list(client.responses.retrieve(created.id, stream=True))
    assert events[-1].type == "response.completed"
    client.responses.retrieve(created.id)
    list(client.responses.retrieve(created.id, stream=True))
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert len(s.state.usage_log.all()) == 1
    assert (rec.usage.input_tokens, rec.usage.output_tokens) == (served.input_tokens, served.output_tokens)


def test_a_cancel_settles_what_the_cancelled_response_reports(s: Stack) -> None:
    client = oa(s.openai_url)
    created = client.responses.create(model="gpt-4o", input="A long essay", background=True, extra_headers=POLLS)
    assert client.responses.retrieve(created.id).status == "in_progress"
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(created.id).status == "cancelled"
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert len(s.state.usage_log.all()) == 1
    assert rec.usage.output_tokens == served.output_tokens == 0
    assert rec.usage.input_tokens == served.input_tokens > 0


def test_retrieving_a_response_that_was_not_deferred_counts_nothing_more(s: Stack) -> None:
    client = oa(s.openai_url)
    done = client.responses.create(model="gpt-4o", input="Hi", extra_headers=POLLS)
    assert done.status == "completed"
    assert client.responses.retrieve(done.id).usage is not None
    (rec,) = s.records(1)
    assert len(s.state.usage_log.all()) == 1
    assert rec.response_id == done.id


def test_a_sidecar_killed_before_the_retrieve_records_the_call_once_at_restart(tmp_path: Path) -> None:
    upstream_app = create_upstream()
    with serve_in_thread(app=upstream_app) as upstream:
        policy = policy_for(upstream, budgets=[BUDGET])
        ledger_dir = tmp_path / "ledger"
        with sidecar_process(tmp_path, policy, ledger_dir=ledger_dir, name="first") as sidecar:
            created = oa(f"{sidecar.data}/openai/v1").responses.create(
                model="gpt-4o", input="Hi", background=True, max_output_tokens=300, extra_headers=POLLS)
            assert drain(sidecar.admin) == []
        # killed (SIGKILL) with the settlement deferred
        with sidecar_process(tmp_path, policy, ledger_dir=ledger_dir, name="second") as sidecar:
            client = oa(f"{sidecar.data}/openai/v1")
            while client.responses.retrieve(created.id).status != "completed":
                pass
            records = drain(sidecar.admin)
            day = windows(sidecar.admin)["day"]
    (rec,) = records
    assert rec["interrupted"]
    assert rec["source"] == "estimated"
    assert rec["usage"]["output_tokens"] == 300, "the cap it was admitted with"
    assert day == rec["usage"]["input_tokens"] + 300
    (served,) = upstream_app[LEDGER].records
    assert served.output_tokens <= 300
