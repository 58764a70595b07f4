"""Every SDK method works through the sidecar: metered where the answer reports usage, forwarded as is
where it does not, and recorded as unmetered when it may bill (issue 14, part 1).

Driven by the official SDKs against the test upstream, which answers each route in its provider's format.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sidecar_harness import Stack, http_get, stack

from tokenbudget_api.usage import Outcome, UsageSource

MESSAGES: list[Any] = [{"role": "user", "content": "Name three prime numbers."}]


@pytest.fixture(scope="module")
def s() -> Iterator[Stack]:
    with stack() as st:
        yield st


@pytest.fixture(autouse=True)
def _clean(s: Stack) -> None:
    s.reset()


def oa(s: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)


def unmetered_count(s: Stack, route: str) -> float:
    for line in http_get(f"{s.admin}/metrics").splitlines():
        if line.startswith("tokenbudget_unmetered_calls_total{") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_are_metered_as_the_provider_reports(s: Stack, stream: bool) -> None:
    headers = {"x-upstream-output-tokens": "9"}
    if stream:
        chunks = list(oa(s).completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=30,
                                               stream=True, extra_headers=headers))
        assert all(c.usage is None for c in chunks), "the usage chunk the app did not ask for leaked through"
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    else:
        out = oa(s).completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=30,
                                       extra_headers=headers)
        text = out.choices[0].text
    (rec,) = s.records(1)
    (served,) = s.ledger.wait_finished(1)
    assert text
    assert rec.operation == "completions"
    assert rec.source is UsageSource.PROVIDER
    assert (rec.usage.input_tokens, rec.usage.output_tokens) == (served.input_tokens, served.output_tokens)
    assert rec.usage.output_tokens == 9
    assert rec.cost_usd is not None


def test_legacy_completions_without_max_tokens_hold_the_providers_default_of_16(s: Stack) -> None:
    oa(s).completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi",
                             extra_headers={"x-upstream-output-tokens": "40"})
    (rec,) = s.records(1)
    assert rec.usage.output_tokens == 16
    assert rec.truncated


def test_free_routes_pass_through_without_a_record(s: Stack) -> None:
    mod = oa(s).moderations.create(input=["hello", "world"])
    assert len(mod.results) == 2
    count = anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0).messages.count_tokens(
        model="claude-sonnet-4-5", messages=MESSAGES)
    assert count.input_tokens > 0
    assert oa(s).models.list().data
    assert s.state.usage_log.all() == []


def test_a_multipart_upload_reaches_the_provider_whole_and_is_recorded_unmetered(s: Stack) -> None:
    payload = b"".join(json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                                   "body": {"model": "gpt-4o", "messages": MESSAGES}}).encode() + b"\n"
                       for i in range(3000))  # ~400 KB, streamed through in many reads
    before = unmetered_count(s, "POST /v1/files")
    uploaded = oa(s).files.create(file=("batch.jsonl", io.BytesIO(payload)), purpose="batch")
    assert uploaded.bytes == len(payload)
    assert uploaded.id == "file-" + hashlib.sha256(payload).hexdigest()[:24], "the bytes arrived unchanged"
    batch = oa(s).batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h")
    assert batch.input_file_id == uploaded.id
    files_rec, batch_rec = s.records(2)
    assert (files_rec.route, batch_rec.route) == ("POST /v1/files", "POST /v1/batches")
    for rec in (files_rec, batch_rec):
        assert rec.source is UsageSource.UNMETERED
        assert rec.operation == "unmetered"
        assert rec.outcome is Outcome.OK
        assert rec.status == 200
    assert unmetered_count(s, "POST /v1/files") == before + 1


def test_anthropic_message_batches_are_forwarded_and_recorded_unmetered(s: Stack) -> None:
    client = anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0)
    batch = client.messages.batches.create(requests=[
        {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": MESSAGES}}])
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == 1
    (rec,) = s.records(1)
    assert rec.route == "POST /v1/messages/batches"
    assert rec.source is UsageSource.UNMETERED


def test_a_route_the_provider_does_not_have_gets_the_providers_own_404(s: Stack) -> None:
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(GET /v1/fine_tuning/jobs"):
        oa(s).fine_tuning.jobs.list()
    assert s.state.usage_log.all() == [], "a read bills nothing"


def test_gemini_embeddings_single_and_batch_are_metered_by_the_prompt_estimate(s: Stack) -> None:
    client = genai.Client(api_key="test-key", http_options=gtypes.HttpOptions(base_url=s.gemini_url))
    one = client.models.embed_content(model="text-embedding-004", contents="a cat on a mat")
    many = client.models.embed_content(model="text-embedding-004", contents=["first text", "second text"])
    assert one.embeddings is not None
    assert len(one.embeddings) == 1
    assert many.embeddings is not None
    assert len(many.embeddings) == 2
    single, batch = s.records(2)
    served = s.ledger.wait_finished(2)
    assert [r.operation for r in (single, batch)] == ["embed", "embed"]
    for rec, up in zip((single, batch), served, strict=True):
        assert rec.source is UsageSource.ESTIMATED  # the answer carries no token count
        assert rec.usage.output_tokens == 0
        assert rec.usage.input_tokens >= up.input_tokens, "the estimate errs high"
    assert served[1].endpoint.endswith(":batchEmbedContents")


async def test_a_gemini_stream_without_alt_sse_is_relayed_as_it_comes_and_metered(s: Stack) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "Count to ten."}]}]}
    url = f"{s.gemini_url}/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    async with aiohttp.ClientSession() as http, http.post(
        url, json=body, headers={"x-upstream-output-tokens": "25", "x-upstream-reasoning-tokens": "7"}
    ) as resp:
        assert resp.content_type == "application/json"
        chunks = json.loads(await resp.read())
    assert len(chunks) > 2
    (rec,) = await asyncio.to_thread(s.records, 1)
    (served,) = await s.ledger.wait_finished_async(1)
    assert rec.source is UsageSource.PROVIDER
    assert not rec.truncated
    assert (rec.usage.input_tokens, rec.usage.output_tokens, rec.usage.reasoning_tokens) == (
        served.input_tokens, served.output_tokens, served.reasoning_tokens)


def test_deny_refuses_unmetered_billing_routes_in_the_providers_shape_and_allows_reads() -> None:
    budget = {"namespace": "team", "name": "strict", "generation": 1,
              "spec": {"selector": {}, "unmeteredRoutes": "Deny"}}
    with stack(budgets=[budget]) as st:
        client = openai.OpenAI(base_url=st.openai_url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError, match=r"POST /v1/files is a route whose answers report "
                           r"no usage, and budget team/strict says unmeteredRoutes: Deny"):
            client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
        ant = anthropic.Anthropic(base_url=st.anthropic_url, api_key="k", max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError, match="POST /v1/messages/batches"):
            ant.messages.batches.create(requests=[])
        assert client.models.list().data, "reads stay allowed"
        files_rec, batch_rec = st.records(2)
        assert files_rec.outcome is Outcome.REFUSED
        assert files_rec.status == 403
        assert files_rec.decisions == ["team/strict:DenyUnmetered"]
        assert batch_rec.route == "POST /v1/messages/batches"


def test_deletes_bill_nothing_and_are_not_refused_by_deny() -> None:
    budget = {"namespace": "team", "name": "strict", "generation": 1,
              "spec": {"selector": {}, "unmeteredRoutes": "Deny"}}
    with stack(budgets=[budget]) as st:
        client = openai.OpenAI(base_url=st.openai_url, api_key="sk-test", max_retries=0)
        with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(DELETE /v1/files/file-abc\)"):
            client.files.delete("file-abc")  # reached the provider (its own 404), not a 403 from the sidecar
        assert st.state.usage_log.all() == []
