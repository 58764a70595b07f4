"""Azure OpenAI through the sidecar with the openai SDK's `AzureOpenAI` client (dialects/azure.py).

The app points `azure_endpoint` at the sidecar's upstream prefix; the sidecar forwards the deployment paths
and `api-version` untouched, sets the `api-key` header from its key file, meters the OpenAI-shaped answers,
and prices each deployment as the model the upstream's `deployments` map names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
from sidecar_harness import stack

from tokenbudget_api import names
from tokenbudget_api.usage import Usage, UsageSource
from tokenbudget_sidecar.pricing import PriceBook

API_VERSION = "2024-10-21"
MESSAGES: list[Any] = [{"role": "user", "content": "Name three prime numbers."}]


def azure_upstream(url: str, key_file: Path) -> dict[str, Any]:
    return {"upstreams": [{"name": "azure", "baseURL": url, "dialect": "AzureOpenAI", "apiKeyFile": str(key_file),
                           "apiKeySecret": "azure-key",
                           "deployments": {"chat-prod": "gpt-4o-mini", "chat-small": "gpt-4.1-nano",
                                           "embed": "text-embedding-3-small"}}]}


def client(base: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=f"{base}/azure", api_version=API_VERSION,
                              api_key=names.PLACEHOLDER_API_KEY, max_retries=0)


def test_azure_openai_calls_are_forwarded_keyed_metered_and_priced_by_deployment(tmp_path: Path) -> None:
    key_file = tmp_path / "azure-key"
    key_file.write_text("azure-secret-key-123\n")
    with stack(**azure_upstream("http://127.0.0.1:1", key_file)) as s:
        s.state.policy.upstreams[0].base_url = s.upstream  # the stack's upstream, known only once it runs
        az = client(s.sidecar)
        plain = az.chat.completions.create(model="chat-prod", messages=MESSAGES, max_tokens=20)
        chunks = list(az.chat.completions.create(model="chat-prod", messages=MESSAGES, max_tokens=20, stream=True))
        embedded = az.embeddings.create(model="embed", input="hello world")
        served = s.ledger.wait_finished(3)
        records = s.records(3)
        base = s.upstream
    assert [r.endpoint for r in served] == ["/openai/deployments/chat-prod/chat/completions"] * 2 + [
        "/openai/deployments/embed/embeddings"]
    assert all(r.request_query == {"api-version": API_VERSION} for r in served)
    assert all(r.request_headers["api-key"] == "azure-secret-key-123" for r in served), "the sidecar's key"
    assert all(chunk.usage is None for chunk in chunks), "the usage chunk the sidecar asked for is hidden"
    assert plain.usage is not None
    assert embedded.usage.prompt_tokens == served[2].input_tokens
    prices = PriceBook([])
    for record, s_rec, model in zip(records, served, ["gpt-4o-mini", "gpt-4o-mini", "text-embedding-3-small"],
                                    strict=True):
        assert record.dialect == "azure"
        assert record.model == s_rec.model, "records name the deployment, as the app does"
        assert (record.usage.input_tokens, record.usage.output_tokens) == (s_rec.input_tokens, s_rec.output_tokens)
        expected = prices.cost(model, base, Usage(input_tokens=s_rec.input_tokens, output_tokens=s_rec.output_tokens))
        assert (record.cost_usd, record.price_source) == expected, "priced as the deployed model"
    assert records[0].cost_usd is not None, "the chat deployment has the catalog's gpt-4o-mini price"
    assert PriceBook([]).cost("chat-prod", base, records[0].usage) == (None, None), "the name alone has none"


def test_a_downgrade_switches_the_deployment_in_the_path(tmp_path: Path) -> None:
    key_file = tmp_path / "azure-key"
    key_file.write_text("k\n")
    spec = {"ladder": [{"at": 1, "action": "Downgrade", "modelMap": {"chat-prod": "chat-small"}}],
            "limits": [{"name": "day", "period": "Day", "tokens": 2000}]}
    with stack(**azure_upstream("http://127.0.0.1:1", key_file),
               budgets=[{"namespace": "default", "name": "team", "spec": {"selector": {}, **spec}}]) as s:
        s.state.policy.upstreams[0].base_url = s.upstream
        az = client(s.sidecar)
        az.chat.completions.create(model="chat-prod", messages=MESSAGES, max_tokens=50)  # past 1 %
        raw = az.chat.completions.with_raw_response.create(model="chat-prod", messages=MESSAGES, max_tokens=50)
        served = s.ledger.wait_finished(2)
    assert raw.headers["x-tokenbudget-downgraded"] == "chat-prod->chat-small"
    assert [r.endpoint for r in served] == ["/openai/deployments/chat-prod/chat/completions",
                                            "/openai/deployments/chat-small/chat/completions"]
    assert served[1].model == "chat-small"


def test_azure_images_are_metered_by_deployment_and_without_one_recorded_unmetered(tmp_path: Path) -> None:
    key_file = tmp_path / "azure-key"
    key_file.write_text("azure-secret-key-123\n")
    with stack(**azure_upstream("http://127.0.0.1:1", key_file)) as s:
        s.state.policy.upstreams[0].base_url = s.upstream
        out = client(s.sidecar).images.generate(model="gpt-image-1", prompt="a kite", quality="low")
        client(s.sidecar).images.generate(prompt="a kite")  # no model: no deployment in the path, dall-e-2
        served = s.ledger.wait_finished(2)
        rec, default = s.records(2)
    assert out.usage is not None
    assert [r.endpoint for r in served] == ["/openai/deployments/gpt-image-1/images/generations",
                                            "/openai/images/generations"]
    assert (rec.operation, rec.model, rec.source) == ("images", "gpt-image-1", UsageSource.PROVIDER)
    assert (rec.usage.input_tokens, rec.usage.output_tokens) == (served[0].input_tokens, served[0].output_tokens)
    assert rec.cost_usd is not None
    assert (default.operation, default.model, default.source) == ("images", "dall-e-2", UsageSource.UNMETERED)
