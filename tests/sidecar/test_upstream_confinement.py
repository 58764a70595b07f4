"""The sidecar forwards only to the upstreams its policy names, under their base URL (docs/threat-model.md).

An app (or whatever runs in its container) that tries to reach another host or another path of the
provider's host through the sidecar, which adds the provider key, gets nothing forwarded: each trick below
is sent as raw HTTP, and two recording servers show what reached them. `upstream` is the policy's base URL
(`/base/v1` on its host); `internal` stands for any other service on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from sidecar_harness import app_in_thread

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_sidecar.app import create_admin_app, create_app, create_state
from tokenbudget_sidecar.settings import Settings

KEY = "sk-confinement-test-key"


@dataclass
class Seen:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, raw path, host header)

    def app(self) -> web.Application:
        async def record(request: web.Request) -> web.Response:
            self.requests.append((request.method, request.raw_path, request.headers.get("host", "")))
            return web.json_response({"object": "list", "data": []})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        return app


@dataclass
class Setup:
    sidecar: str
    upstream: Seen
    internal: Seen
    upstream_port: int
    internal_port: int


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    upstream, internal = Seen(), Seen()
    key_file = Path(tmp_path_factory.mktemp("key")) / "key"
    key_file.write_text(KEY)
    with app_in_thread(lambda: [upstream.app(), internal.app()]) as (up_url, in_url):
        policy = SidecarPolicy.model_validate({"upstreams": [
            {"name": "openai", "baseURL": f"{up_url}/base/v1", "dialect": "OpenAI", "apiKeyFile": str(key_file)}]})
        settings = Settings(data_port=0, admin_port=0)
        state = create_state(settings, policy)
        with app_in_thread(lambda: [create_app(settings, state), create_admin_app(state)]) as (data, _admin):
            yield Setup(data, upstream, internal, int(up_url.rsplit(":", 1)[1]), int(in_url.rsplit(":", 1)[1]))


def raw(base: str, target: str, host: str | None = None) -> tuple[int, bytes]:
    """One request exactly as written (request line and Host), as a hostile client would send it."""
    port = int(base.rsplit(":", 1)[1])

    async def send() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {target} HTTP/1.1\r\nhost: {host or f'127.0.0.1:{port}'}\r\n"
                     "authorization: Bearer app-placeholder\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        return data

    answer = asyncio.run(send())
    return int(answer.split(b" ", 2)[1]), answer.split(b"\r\n\r\n", 1)[1]


def forwarded(setup: Setup, action: object) -> list[tuple[str, str, str]]:
    before_up, before_in = len(setup.upstream.requests), len(setup.internal.requests)
    action()  # type: ignore[operator]
    assert setup.internal.requests[before_in:] == [], "a request reached a host the policy does not name"
    return setup.upstream.requests[before_up:]


DOT_TRICKS = ["/openai/..%2f..%2fadmin", "/openai/../../admin", "/openai/%2e%2e/%2e%2e/admin",
              "/openai/v1/%2e%2e%2f%2e%2e%2f%2e%2e%2fadmin", "/openai/./v1/models", "/openai/v1/models/.."]


@pytest.mark.parametrize("target", DOT_TRICKS)
def test_a_path_with_dot_segments_is_refused_and_not_forwarded(setup: Setup, target: str) -> None:
    statuses: list[int] = []
    sent = forwarded(setup, lambda: statuses.append(raw(setup.sidecar, target)[0]))
    assert statuses == [400]
    assert sent == []


def test_an_absolute_url_in_the_request_line_goes_to_the_policy_upstream_only(setup: Setup) -> None:
    target = f"http://127.0.0.1:{setup.internal_port}/openai/v1/models"
    sent = forwarded(setup, lambda: raw(setup.sidecar, target))
    assert [(m, p) for m, p, _ in sent] == [("GET", "/base/v1/v1/models")]


def test_a_host_header_naming_another_service_changes_nothing(setup: Setup) -> None:
    sent = forwarded(setup, lambda: raw(setup.sidecar, "/openai/v1/models", host=f"127.0.0.1:{setup.internal_port}"))
    assert sent == [("GET", "/base/v1/v1/models", f"127.0.0.1:{setup.upstream_port}")]


def test_a_double_slash_authority_stays_a_path_under_the_base_url(setup: Setup) -> None:
    sent = forwarded(setup, lambda: raw(setup.sidecar, f"/openai//127.0.0.1:{setup.internal_port}/admin"))
    assert [p for _, p, _ in sent] == [f"/base/v1//127.0.0.1:{setup.internal_port}/admin"]


def test_an_encoded_question_mark_or_hash_stays_in_the_path(setup: Setup) -> None:
    sent = forwarded(setup, lambda: (raw(setup.sidecar, "/openai/v1/models%3fx=1"),
                                     raw(setup.sidecar, "/openai/v1/models%23frag")))
    assert [p for _, p, _ in sent] == ["/base/v1/v1/models%3Fx=1", "/base/v1/v1/models%23frag"]


@pytest.mark.parametrize("target", ["/openai@127.0.0.1:{port}/v1/models", "/127.0.0.1:{port}/v1/models",
                                    "/internal/v1/models"])
def test_an_upstream_the_policy_does_not_name_is_a_404(setup: Setup, target: str) -> None:
    answers: list[tuple[int, bytes]] = []
    sent = forwarded(setup, lambda: answers.append(raw(setup.sidecar, target.format(port=setup.internal_port))))
    assert sent == []
    assert answers[0][0] == 404
    assert "no upstream named" in json.loads(answers[0][1])["error"]["message"]
