"""The preStop drain: a terminating pod's sidecar waits for the operator to take its last usage records."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, http_get, http_post, stack

from tokenbudget_operator.config import InjectionConfig
from tokenbudget_operator.injector.sidecar_spec import sidecar_container
from tokenbudget_sidecar.settings import Settings


@pytest.fixture
def s(tmp_path: Path) -> Iterator[Stack]:
    settings = Settings(data_port=0, admin_port=0, ledger_dir=tmp_path, drain_timeout_s=0.6)
    with stack(settings) as st:
        client = openai.OpenAI(base_url=st.openai_url, api_key="sk-test", max_retries=0)
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        st.records(3)
        yield st


def drain_in_thread(s: Stack) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(json.loads(http_get(f"{s.admin}/drain"))))
    thread.start()
    return thread, out


def test_a_sidecar_no_operator_pulls_from_answers_at_once(s: Stack) -> None:
    answer = json.loads(http_get(f"{s.admin}/drain"))
    assert answer["operatorSeen"] is False
    assert answer["unacked"] == 3, "nobody would come for them: waiting would only delay the pod's end"


def test_drain_holds_until_the_operator_acknowledges_the_last_record(s: Stack) -> None:
    page = json.loads(http_get(f"{s.admin}/usage?after=0"))  # the operator's pull
    thread, out = drain_in_thread(s)
    thread.join(0.3)
    assert thread.is_alive(), "drain must wait while records are unacknowledged"
    http_post(f"{s.admin}/usage/ack", {"cursor": page["cursor"]})
    thread.join(5)
    assert out["unacked"] == 0
    assert out["operatorSeen"] is True


def test_drain_gives_up_at_its_timeout_and_says_what_is_left(s: Stack) -> None:
    json.loads(http_get(f"{s.admin}/usage?after=0"))
    thread, out = drain_in_thread(s)
    thread.join(5)
    assert not thread.is_alive()
    assert out["unacked"] == 3
    assert out["waitedSeconds"] >= 0.6


def test_the_injected_sidecar_drains_before_it_is_stopped() -> None:
    container = sidecar_container(InjectionConfig())
    assert container["lifecycle"]["preStop"]["httpGet"]["path"] == "/drain"
    assert container["lifecycle"]["preStop"]["httpGet"]["port"] == container["ports"][0]["name"]
