"""Keys held by the sidecar: the provider's auth header comes from the upstream's key file, never from the app.

The webhook mounts the Secret an upstream's apiKeySecretRef names into the sidecar only (golden files in
tests/injector); here the sidecar gets key files on disk and the official SDKs, configured with the
webhook's placeholder key, call through it to the test upstream, which records every header it receives.
A key file that is missing or unreadable answers 502 in the provider's shape naming the upstream and the
Secret. Then a real sidecar process, with a ledger and DEBUG logs, serves SDK calls of every kind, and
everything it wrote (its log, the ledger files, /metrics, /usage, /budgets, the bodies the apps got) is
searched for the keys.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sidecar_harness import Stack, stack
from sidecar_process import get_text, sidecar_process

from tokenbudget_api import names
from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_testing.upstream.app import LEDGER, serve_in_thread
from tokenbudget_testing.upstream.app import create_app as create_upstream

PLACEHOLDER = names.PLACEHOLDER_API_KEY
DIALECTS = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Gemini"}
AUTH = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}


def write_keys(tmp: Path) -> dict[str, str]:
    """One distinctive key per upstream, as the webhook mounts them: <dir>/<secret>/<key>."""
    keys = {}
    for name in DIALECTS:
        keys[name] = f"sk-{name}-{secrets.token_hex(16)}"
        path = tmp / "upstreams" / f"{name}-secret" / "api-key"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(keys[name] + "\n")
    return keys


def keyed_upstreams(url: str, tmp: Path, **override: str) -> list[dict[str, Any]]:
    return [{"name": n, "baseURL": url, "dialect": d, "apiKeySecret": f"{n}-secret",
             "apiKeyFile": override.get(n, str(tmp / "upstreams" / f"{n}-secret" / "api-key"))}
            for n, d in DIALECTS.items()]


def clients(base: str) -> tuple[openai.OpenAI, anthropic.Anthropic, genai.Client]:
    """The SDKs as an injected app has them: base URLs at the sidecar, the webhook's placeholder key."""
    return (openai.OpenAI(base_url=f"{base}/openai/v1", api_key=PLACEHOLDER, max_retries=0),
            anthropic.Anthropic(base_url=f"{base}/anthropic", api_key=PLACEHOLDER, max_retries=0),
            genai.Client(api_key=PLACEHOLDER, http_options=gtypes.HttpOptions(base_url=f"{base}/gemini")))


def every_kind_of_call(base: str) -> list[bytes]:
    """Plain and streamed calls of each SDK, a pass-through route and an upstream error; the bodies the app got."""
    oa, an, gm = clients(base)
    msgs: Any = [{"role": "user", "content": "hi"}]
    chat = oa.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs, max_tokens=5)
    bodies = [chat.http_response.content,
              an.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=5,
                                                   messages=msgs).http_response.content,
              oa.models.with_raw_response.list().http_response.content]
    bodies += [chunk.model_dump_json().encode() for chunk in oa.chat.completions.create(
        model="gpt-4o-mini", messages=msgs, max_tokens=5, stream=True)]
    with an.messages.stream(model="claude-haiku-4-5", max_tokens=5, messages=msgs) as stream:
        bodies += [event.model_dump_json().encode() for event in stream]
    bodies.append(gm.models.generate_content(model="gemini-2.5-flash", contents="hi").model_dump_json().encode())
    bodies += [c.model_dump_json().encode() for c in gm.models.generate_content_stream(model="gemini-2.5-flash",
                                                                                      contents="hi")]
    with pytest.raises(openai.InternalServerError) as err:
        oa.chat.completions.create(model="gpt-4o-mini", messages=msgs, extra_headers={"x-upstream-fail": "500"})
    bodies.append(err.value.response.content)
    return bodies


def test_the_sidecar_sends_each_providers_key_from_its_file_and_never_the_apps(tmp_path: Path) -> None:
    keys = write_keys(tmp_path)
    upstream_app = create_upstream()
    with serve_in_thread(app=upstream_app) as url:
        policy = SidecarPolicy.model_validate({"upstreams": keyed_upstreams(url, tmp_path)})
        with sidecar_process(tmp_path, policy) as sidecar:
            every_kind_of_call(sidecar.data)
    served = upstream_app[LEDGER].records
    assert {s.dialect.split("-")[0] for s in served} == {"openai", "anthropic", "gemini"}
    for s in served:
        dialect = s.dialect.split("-")[0]
        expected = f"Bearer {keys['openai']}" if dialect == "openai" else keys[dialect]
        assert s.request_headers[AUTH[dialect]] == expected
        assert PLACEHOLDER not in json.dumps(s.request_headers), "the app's placeholder reached the provider"


@pytest.mark.parametrize("problem", ["missing", "a directory", "empty"])
def test_an_unusable_key_file_is_a_502_in_each_providers_shape_naming_the_upstream_and_secret(
        tmp_path: Path, problem: str) -> None:
    write_keys(tmp_path)
    bad = tmp_path / "upstreams" / "gone" / "api-key"
    if problem == "a directory":
        bad.mkdir(parents=True)
    elif problem == "empty":
        bad.parent.mkdir(parents=True)
        bad.write_text("\n")
    with serve_in_thread() as url, stack(upstreams=keyed_upstreams(url, tmp_path, **dict.fromkeys(DIALECTS, str(bad)))
                                         ) as s:
        s.upstream = url
        oa, an, gm = clients(s.sidecar)
        msgs: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.InternalServerError) as oe:
            oa.chat.completions.create(model="gpt-4o-mini", messages=msgs)
        with pytest.raises(anthropic.InternalServerError) as ae:
            an.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=msgs)
        with pytest.raises(genai.errors.ServerError) as ge:
            gm.models.generate_content(model="gemini-2.5-flash", contents="hi")
        with pytest.raises(openai.InternalServerError) as passthrough:
            oa.files.list()
        assert (oe.value.status_code, ae.value.status_code, ge.value.code) == (502, 502, 502)
        assert oe.value.body["type"] == "server_error"  # type: ignore[index]
        assert ae.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        assert ge.value.status == "UNAVAILABLE" or ge.value.code == 502
        for message, upstream in [(oe.value.message, "openai"), (ae.value.message, "anthropic"),
                                  (ge.value.message or "", "gemini"), (passthrough.value.message, "openai")]:
            assert f"upstream '{upstream}'" in message
            assert f"Secret '{upstream}-secret'" in message
            assert "restart the pod" in message
        assert_nothing_forwarded(s)


def assert_nothing_forwarded(s: Stack) -> None:
    assert s.ledger.records == [], "a call without its key must not reach the provider with the placeholder"
    records = s.records(3)
    assert {(r.outcome.value, r.usage.total_tokens) for r in records} == {("upstream_failed", 0)}


def test_keys_never_appear_in_logs_ledger_metrics_or_bodies(tmp_path: Path) -> None:
    keys = write_keys(tmp_path)
    ledger = tmp_path / "ledger"
    with serve_in_thread() as url:
        policy = SidecarPolicy.model_validate({"upstreams": keyed_upstreams(url, tmp_path), "budgets": [
            {"namespace": "t", "name": "b", "spec": {"selector": {}, "limits": [
                {"name": "day", "period": "Day", "tokens": 10_000_000}]}}]})
        env = {**os.environ, "TOKENBUDGET_LOG_LEVEL": "DEBUG"}
        with sidecar_process(tmp_path, policy, env=env, ledger_dir=ledger) as sidecar:
            bodies = every_kind_of_call(sidecar.data)
            (tmp_path / "upstreams" / "openai-secret" / "api-key").unlink()  # and an error about the key
            with pytest.raises(openai.InternalServerError) as err:
                clients(sidecar.data)[0].models.list()
            bodies.append(err.value.response.content)
            written = [get_text(f"{sidecar.admin}{path}") for path in ("/metrics", "/usage?after=0", "/budgets",
                                                                       "/readyz")]
            log = sidecar.log()
        files = [p.read_bytes() for p in ledger.iterdir() if p.is_file()]
    assert len(bodies) > 10, "the apps got bodies"
    assert files, "the ledger holds records"
    assert '"call"' in log, "the sidecar logged each call"
    everything = b"\n".join([*bodies, *files, *(w.encode() for w in written), log.encode()])
    for name, key in keys.items():
        assert key.encode() not in everything, f"the {name} key leaked"
        assert key[12:].encode() not in everything, f"part of the {name} key leaked"
