"""Background Responses nobody retrieves through this sidecar: deferrals have an age limit and a bound (background.py).

An app may poll its background Response through another pod, or only learn its end by webhook: this sidecar then
never sees it end. Its deferral used to stay in memory until a restart turned its intent into a record. Now it is
recorded once `TOKENBUDGET_DEFERRAL_TTL_S` after its create, or when `TOKENBUDGET_MAX_DEFERRALS` newer ones push it
out: estimated (prompt estimate plus the output cap), flagged `interrupted` as the restart path would, its intent
closed, counted in `tokenbudget_background_expired_calls_total`. A retrieve afterwards is a plain read.

Driven by the openai SDK against the test upstream, as tests/sidecar/test_background_responses.py.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.usage import UsageSource
from tokenbudget_sidecar.settings import Settings

BUDGET: dict[str, Any] = {"namespace": "team", "name": "bg", "generation": 1,
                          "spec": {"selector": {}, "limits": [{"name": "day", "duration": "24h", "tokens": 1_000_000}]}}
POLLS = {"x-upstream-background-polls": "3", "x-upstream-output-tokens": "40"}
TTL_S = 0.5
PROMPT = "Write a haiku about rivers and the sea, please."


def oa(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="sk-test", max_retries=0)


def used(s: Stack) -> Decimal:
    (b,) = json.loads(http_get(f"{s.admin}/budgets"))["budgets"]
    return sum((Decimal(w["used"]) for w in b["windows"]), Decimal(0))


def expired(s: Stack, reason: str) -> float:
    for line in http_get(f"{s.admin}/metrics").splitlines():
        if line.startswith("tokenbudget_background_expired_calls_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def retrieve_to_the_end(client: openai.OpenAI, response_id: str) -> None:
    """Poll until the response ended, then once more streamed: every way a retrieve could settle it."""
    while client.responses.retrieve(response_id).status != "completed":
        pass
    assert list(client.responses.retrieve(response_id, stream=True))[-1].type == "response.completed"


def test_a_deferral_never_retrieved_is_recorded_once_at_its_age_limit_and_a_restart_adds_nothing(
        tmp_path: Path) -> None:
    ledger_dir = tmp_path / "ledger"
    settings = Settings(data_port=0, admin_port=0, ledger_dir=ledger_dir, deferral_ttl_s=TTL_S)
    with stack(settings, budgets=[BUDGET]) as s:
        created = oa(s.openai_url).responses.create(model="gpt-4o", input=PROMPT, background=True,
                                                    max_output_tokens=300, extra_headers=POLLS)
        assert created.status == "queued"
        assert s.state.usage_log.all() == [], "deferred: nothing known yet"
        (rec,) = s.records(1, timeout=TTL_S + 10)  # no other traffic: the sidecar's own timer records it
        assert rec.response_id == created.id
        assert rec.interrupted, "flagged as the restart path flags a call whose end it never saw"
        assert rec.source is UsageSource.ESTIMATED
        assert rec.usage.output_tokens == 300, "the cap it was admitted with"
        assert rec.usage.input_tokens == rec.prompt_estimate > 0
        assert not rec.prompt_bound, "the prompt counted with tiktoken, not its byte bound"
        assert rec.prompt_estimate < len(PROMPT.encode())
        assert rec.budgets == ["team/bg"]
        assert rec.cost_usd is not None
        assert used(s) == rec.usage.total_tokens, "counted in the budget"
        ledger = s.state.usage_log.ledger
        assert ledger is not None
        assert ledger.open_intents == 0, "its record closed the intent"
        assert expired(s, "expired") == 1
        assert expired(s, "evicted") == 0
    with stack(settings, budgets=[BUDGET]) as again:
        assert again.state.usage_log.recovered == [], "a restart finds no open intent to record again"
        assert [r.request_id for r in again.state.usage_log.all()] == [rec.request_id]


def test_a_retrieve_after_the_expiry_is_a_plain_read(tmp_path: Path) -> None:
    with stack(Settings(data_port=0, admin_port=0, deferral_ttl_s=TTL_S), budgets=[BUDGET]) as s:
        client = oa(s.openai_url)
        created = client.responses.create(model="gpt-4o", input="Hi", background=True, max_output_tokens=300,
                                          extra_headers=POLLS)
        (rec,) = s.records(1, timeout=TTL_S + 10)
        before = used(s)
        retrieve_to_the_end(client, created.id)
        assert s.state.usage_log.all() == [rec], "the end it shows is not counted again"
        assert used(s) == before
        assert expired(s, "expired") == 1


def test_past_the_bound_the_oldest_deferral_is_recorded_and_the_others_still_settle_from_the_provider() -> None:
    with stack(Settings(data_port=0, admin_port=0, max_deferrals=2), budgets=[BUDGET]) as s:
        client = oa(s.openai_url)
        ids = [client.responses.create(model="gpt-4o", input="Hi", background=True, max_output_tokens=100 + i,
                                       extra_headers=POLLS).id for i in range(3)]
        (oldest,) = s.records(1)
        assert oldest.response_id == ids[0], "the oldest makes room"
        assert oldest.interrupted
        assert oldest.source is UsageSource.ESTIMATED
        assert oldest.usage.output_tokens == 100
        assert expired(s, "evicted") == 1
        assert expired(s, "expired") == 0
        for rid in ids:
            retrieve_to_the_end(client, rid)
        records = s.records(3)
        assert [r.response_id for r in records] == ids
        assert [r.source for r in records] == [UsageSource.ESTIMATED, UsageSource.PROVIDER, UsageSource.PROVIDER]
        assert [r.usage.output_tokens for r in records[1:]] == [40, 40]
        assert len(s.state.usage_log.all()) == 3, "the evicted one's retrieves are plain reads"
        assert used(s) == sum(r.usage.total_tokens for r in records)
