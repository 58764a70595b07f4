"""A restarted sidecar enforces its windows as if it had never stopped (checkpoint.py).

The sidecar runs in-process on a ledger directory, is driven with the official openai SDK, acknowledged
by cursor as the operator does, stopped, and started again on the same directory with its embedded-style
policy; the operator's policy then arrives by PUT /policy, as after a container restart in a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, http_get, http_post, policy_for, stack

from tokenbudget_sidecar.settings import Settings

BUDGET = {"namespace": "team-a", "name": "shared", "generation": 1, "spec": {
    "selector": {}, "timeZone": "Europe/Berlin",
    "limits": [{"name": "day", "period": "Day", "tokens": 100_000},
               {"name": "per-user", "period": "Day", "tokens": 100_000, "per": "User"},
               {"name": "hour", "duration": "1h", "tokens": 100_000}]}}


def settings(ledger: Path) -> Settings:
    return Settings(data_port=0, admin_port=0, ledger_dir=ledger)


def call(s: Stack, user: str, n: int = 1) -> int:
    """`n` chat calls as `user`; the tokens the upstream billed."""
    client = openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)
    return sum(client.chat.completions.create(
        model="gpt-4o-mini", user=user, max_tokens=20, messages=[{"role": "user", "content": "hello"}],
    ).usage.total_tokens for _ in range(n))  # type: ignore[union-attr]


def pull_and_ack(s: Stack) -> None:
    page = json.loads(http_get(f"{s.admin}/usage?after=0"))
    http_post(f"{s.admin}/usage/ack", {"cursor": page["cursor"]})


def push(s: Stack, **budget: Any) -> None:
    policy = policy_for(s.upstream, budgets=[{**BUDGET, **budget}])
    http_post(f"{s.admin}/policy", policy.model_dump(mode="json", by_alias=True), method="PUT")


def windows(s: Stack) -> dict[tuple[str, str | None], dict[str, Any]]:
    budgets = json.loads(http_get(f"{s.admin}/budgets"))["budgets"]
    (b,) = [b for b in budgets if b["name"] == "team-a/shared"]
    return {(w["name"], w["key"]): w for w in b["windows"]}


@pytest.fixture
def spent(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """Five calls by two users under the operator's policy: three acknowledged, two not; then a stop."""
    with stack(settings(tmp_path)) as s:
        push(s)
        used = {"ann": call(s, "ann", 2), "bob": call(s, "bob", 1)}
        s.records(3)
        pull_and_ack(s)
        unacked = call(s, "ann", 2)
        used["ann"] += unacked
        s.records(2)  # the unacknowledged ones
    return tmp_path, {**used, "unacked": unacked}


def test_a_restart_then_the_operators_push_restores_every_window(spent: tuple[Path, dict[str, int]]) -> None:
    ledger, used = spent
    with stack(settings(ledger)) as s:  # starts on a policy without the operator's budget
        push(s)
        got = windows(s)
    total = used["ann"] + used["bob"]
    assert got["day", None]["used"] == str(total), "acknowledged and unacknowledged calls both count"
    assert got["hour", None]["used"] == str(total)
    assert (got["per-user", "ann"]["used"], got["per-user", "bob"]["used"]) == (str(used["ann"]), str(used["bob"]))


def test_a_leased_window_refuses_at_its_grant_after_a_restart(spent: tuple[Path, dict[str, int]]) -> None:
    ledger, used = spent
    total = used["ann"] + used["bob"]
    with stack(settings(ledger)) as s:
        push(s)
        start = windows(s)["day", None]["periodStart"]
        # The operator's grant: what this pod had spent, plus room for less than one more call.
        push(s, leases=[{"window": "day", "granted": str(total + 10), "periodStart": start,
                         "expiresAt": "2099-01-01T00:00:00Z"}])
        with pytest.raises(openai.RateLimitError, match="day"):
            call(s, "ann")


def test_a_crash_between_the_snapshot_and_the_ack_counts_nothing_twice(tmp_path: Path) -> None:
    with stack(settings(tmp_path)) as s:
        push(s)
        first = call(s, "ann", 2)
        s.records(2)
        pull_and_ack(s)
        later = call(s, "ann", 1)
        s.records(1)
        # The snapshot of the next ack is written with the cursor; here the operator pulled but its ack
        # never arrived: the third record is in the ledger (unacknowledged) and not in any snapshot.
    with stack(settings(tmp_path)) as s:
        push(s)
        assert windows(s)["day", None]["used"] == str(first + later)
        assert len(json.loads(http_get(f"{s.admin}/usage?after=0"))["records"]) == 1, "still offered"


def test_yesterdays_use_does_not_come_back_today(spent: tuple[Path, dict[str, int]]) -> None:
    ledger, used = spent
    state = json.loads((ledger / "ack.json").read_text())["state"]
    for w in state["windows"]:
        w["at"] = [["2020-01-01T10:00:00Z", amount] for _, amount in w["at"]]
    (ledger / "ack.json").write_text(json.dumps({**json.loads((ledger / "ack.json").read_text()), "state": state}))
    with stack(settings(ledger)) as s:
        push(s)
        got = windows(s)
    assert got["day", None]["used"] == str(used["unacked"]), "only the unacknowledged calls count"


def test_an_unreadable_snapshot_is_logged_and_the_unacknowledged_calls_still_count(
    spent: tuple[Path, dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    ledger, used = spent
    ack = json.loads((ledger / "ack.json").read_text())
    (ledger / "ack.json").write_text(json.dumps({**ack, "state": {"seq": "many", "windows": 7}}))
    with stack(settings(ledger)) as s:
        push(s)
        got = windows(s)
    assert "window snapshot unreadable" in caplog.text
    assert got["day", None]["used"] == str(used["unacked"])
