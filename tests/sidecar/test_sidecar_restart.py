"""A restarted sidecar enforces every window as if it had never stopped (checkpoint.py).

The real sidecar app runs in-process on a ledger directory (an emptyDir in pods) and is driven with the
official openai SDK against the stand-in provider. The operator's part is played over the admin port as
the operator plays it: GET /usage, POST /usage/ack, PUT /policy. A "restart" stops the app and starts a
new State on the same directory with the startup policy (no budget, like the embedded default); the
operator learns of the restart from its next pull, acknowledges what it pulled, then pushes again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sidecar_harness import Stack, app_in_thread, http_get, http_post, policy_for

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.windows import Clock, ManualClock, SystemClock
from tokenbudget_sidecar import budget as budget_module
from tokenbudget_sidecar import checkpoint as checkpoint_module
from tokenbudget_sidecar.app import create_admin_app, create_app
from tokenbudget_sidecar.settings import Settings
from tokenbudget_sidecar.state import State
from tokenbudget_sidecar.usage_log import UsageLog
from tokenbudget_testing.upstream.app import LEDGER, serve_in_thread
from tokenbudget_testing.upstream.app import create_app as create_upstream

NAME = "team-a/shared"
LIMITS: list[dict[str, Any]] = [
    {"name": "day", "period": "Day", "tokens": 100_000},  # calendar, Europe/Berlin
    {"name": "per-user", "period": "Day", "tokens": 100_000, "per": "User"},
    {"name": "hour", "duration": "1h", "tokens": 100_000},  # rolling, 30 s buckets
    {"name": "user-10m", "duration": "10m", "requests": 1_000, "per": "User"},  # rolling, per user, requests
    {"name": "usd", "period": "Month", "costUSD": "100"},
]
BUDGET: dict[str, Any] = {"namespace": "team-a", "name": "shared", "generation": 1,
                          "spec": {"selector": {}, "timeZone": "Europe/Berlin", "limits": LIMITS}}
PRICES = [{"model": "gpt-4o-mini", "inputPerMillion": "150", "outputPerMillion": "600"}]  # big: exact sums
MIDNIGHT = dt.datetime(2026, 11, 24, 23, 0, tzinfo=dt.UTC)  # 00:00 in Berlin on the 25th
PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"


@contextlib.contextmanager
def sidecar(ledger: Path, clock: Clock | None = None, **startup: Any) -> Iterator[Stack]:
    """The sidecar app (data + admin port) on `ledger` with the startup policy `startup`, and an upstream."""
    upstream_app = create_upstream()
    with serve_in_thread(app=upstream_app) as upstream_url:
        settings = Settings(data_port=0, admin_port=0, ledger_dir=ledger)
        state = State(settings=settings, policy=policy_for(upstream_url, **startup),
                      usage_log=UsageLog.from_settings(settings), clock=clock or SystemClock())
        with app_in_thread(lambda: [create_app(settings, state), create_admin_app(state)]) as (data, admin):
            yield Stack(data, admin, upstream_url, state, upstream_app[LEDGER])


def call(s: Stack, user: str, n: int = 1) -> int:
    """`n` chat calls as `user`; the tokens the upstream billed."""
    client = openai.OpenAI(base_url=s.openai_url, api_key="sk-test", max_retries=0)
    return sum(client.chat.completions.create(
        model="gpt-4o-mini", user=user, max_tokens=20, messages=[{"role": "user", "content": "hello"}],
    ).usage.total_tokens for _ in range(n))  # type: ignore[union-attr]


def pull_and_ack(s: Stack) -> list[dict[str, Any]]:
    """The operator's usage round: everything after its cursor (0: it keeps none here), then the ack."""
    page = json.loads(http_get(f"{s.admin}/usage?after=0"))
    http_post(f"{s.admin}/usage/ack", {"cursor": page["cursor"]})
    return list(page["records"])


def policy(s: Stack, **budget: Any) -> SidecarPolicy:
    return policy_for(s.upstream, budgets=[{**BUDGET, **budget}], prices=PRICES)


def push(s: Stack, **budget: Any) -> None:
    body = policy(s, **budget).model_dump(mode="json", by_alias=True)
    http_post(f"{s.admin}/policy", body, method="PUT")


def windows(s: Stack) -> dict[tuple[str, str | None], Decimal]:
    budgets = json.loads(http_get(f"{s.admin}/budgets"))["budgets"]
    (b,) = [b for b in budgets if b["name"] == NAME]
    return {(w["name"], w["key"]): Decimal(w["used"]) for w in b["windows"]}


def expected(records: list[dict[str, Any]]) -> dict[tuple[str, str | None], Decimal]:
    """What every window holds after `records` (all of today, within the last ten minutes)."""
    out: dict[tuple[str, str | None], Decimal] = {}
    for r in records:
        tokens, usd = Decimal(r["usage"]["input_tokens"] + r["usage"]["output_tokens"]), Decimal(r["cost_usd"])
        for key, amount in [(("day", None), tokens), (("per-user", r["user"]), tokens), (("hour", None), tokens),
                            (("user-10m", r["user"]), Decimal(1)), (("usd", None), usd)]:
            out[key] = out.get(key, Decimal(0)) + amount
    return out


@pytest.fixture
def spent(tmp_path: Path) -> tuple[Path, list[dict[str, Any]], dict[tuple[str, str | None], Decimal]]:
    """Five calls by two users under the operator's policy, three acknowledged and two not; then a stop.

    Returns the directory, every record, and the windows as the sidecar showed them before it stopped.
    """
    with sidecar(tmp_path) as s:
        push(s)
        call(s, "ann", 2)
        call(s, "bob", 1)
        s.records(3)
        records = pull_and_ack(s)
        call(s, "ann", 2)
        s.records(2)
        before = windows(s)
        records += [r.model_dump(mode="json") for r in s.state.usage_log.all()]
    assert len(records) == 5
    assert before == expected(records)
    return tmp_path, records, before


@pytest.mark.parametrize("order", ["ack, then push (the operator's order)", "push, then ack"])
def test_after_a_restart_the_operators_policy_finds_every_window_as_it_was(
    spent: tuple[Path, list[dict[str, Any]], dict[tuple[str, str | None], Decimal]], order: str
) -> None:
    ledger, records, before = spent
    with sidecar(ledger) as s:
        assert [r["seq"] for r in json.loads(http_get(f"{s.admin}/usage?after=3"))["records"]] == [4, 5]
        if order.startswith("ack"):
            pull_and_ack(s)  # the two unacknowledged records, pulled under the startup policy
            push(s)
        else:
            push(s)
            pull_and_ack(s)
        after = windows(s)
    assert after == before, "acknowledged and unacknowledged calls both count, each once"
    assert after["day", None] == sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records)


def test_a_leased_window_refuses_at_its_grant_instead_of_granting_it_again(
    spent: tuple[Path, list[dict[str, Any]], dict[tuple[str, str | None], Decimal]]
) -> None:
    ledger, _, before = spent
    with sidecar(ledger) as s:
        pull_and_ack(s)
        push(s)
        (start,) = [w["periodStart"] for w in json.loads(http_get(f"{s.admin}/budgets"))["budgets"][0]["windows"]
                    if w["name"] == "day"]
        # The grant the operator computed from its books: what this pod spent, plus less than one call.
        push(s, leases=[{"window": "day", "granted": str(before["day", None] + 10), "periodStart": start,
                         "expiresAt": "2099-01-01T00:00:00Z"}])
        with pytest.raises(openai.RateLimitError, match=r"limit day: this pod's grant has 10 tokens left"):
            call(s, "ann")


def test_calls_never_acknowledged_before_a_restart_count_once_acknowledged_before_the_push(tmp_path: Path) -> None:
    with sidecar(tmp_path) as s:  # no checkpoint was ever written: the operator never acknowledged
        push(s)
        call(s, "ann", 3)
        before = windows(s)
    with sidecar(tmp_path) as s:
        assert len(pull_and_ack(s)) == 3  # counted by the checkpoint for a budget the policy lacks yet
        push(s)
        assert windows(s) == before
    with sidecar(tmp_path) as s:  # and once more, from the checkpoint alone
        push(s)
        assert windows(s) == before


def test_a_crash_between_the_checkpoint_and_the_ledgers_ack_counts_nothing_twice(
    spent: tuple[Path, list[dict[str, Any]], dict[tuple[str, str | None], Decimal]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, records, before = spent
    with sidecar(ledger) as s:
        push(s)
        assert s.state.usage_log.ledger is not None
        # The checkpoint is written, then the process dies before the ledger persists the cursor.
        monkeypatch.setattr(s.state.usage_log.ledger, "ack", lambda cursor, last_seq: None)
        assert len(pull_and_ack(s)) == 2
        assert s.state.checkpoint.cursor == 5
    assert json.loads((ledger / "ack.json").read_text())["acked"] == 3
    monkeypatch.undo()
    with sidecar(ledger) as s:
        push(s)
        assert windows(s) == before, "records 4 and 5 are in the checkpoint: the ledger replay skips them"
        assert [r["seq"] for r in pull_and_ack(s)] == [4, 5], "still offered to the operator (its cursor filters)"
        assert windows(s) == before, "the second ack of 4 and 5 counts them no second time"
        call(s, "bob")
        s.records(1)
        after = windows(s)
    with sidecar(ledger) as s:
        push(s)
        assert windows(s) == after
    assert after["day", None] > before["day", None] == sum(
        r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records)


def test_a_standalone_policy_file_is_seeded_the_same_way_at_start(tmp_path: Path) -> None:
    with sidecar(tmp_path) as s:
        push(s)
        call(s, "ann", 2)
        s.records(2)
        pull_and_ack(s)
        call(s, "bob")
        before = windows(s)
    with sidecar(tmp_path, budgets=[BUDGET], prices=PRICES) as s:  # the budget is in the startup policy
        assert windows(s) == before


def test_yesterdays_use_stays_in_yesterday_but_the_rolling_hour_still_holds_it(tmp_path: Path) -> None:
    clock = ManualClock(MIDNIGHT - dt.timedelta(minutes=20))  # 23:40 in Berlin
    with sidecar(tmp_path, clock) as s:
        push(s)
        acked = call(s, "ann", 2)
        s.records(2)
        pull_and_ack(s)
        clock.advance(dt.timedelta(minutes=10))
        unacked = call(s, "bob")
        s.records(1)
    clock.set(MIDNIGHT + dt.timedelta(minutes=5))  # down across midnight; back at 00:05
    with sidecar(tmp_path, clock) as s:
        pull_and_ack(s)
        push(s)
        got = windows(s)
        assert got.get(("day", None), 0) == got.get(("per-user", "ann"), 0) == 0, "a new day"
        assert got["hour", None] == acked + unacked, "the last hour reaches back before midnight"
        assert got["usd", None] > 0, "and the month goes on"
        clock.advance(dt.timedelta(minutes=60))  # 01:05: the calls of 23:40 and 23:50 left the hour
        assert windows(s)["hour", None] == 0
    clock.advance(dt.timedelta(minutes=1))
    with sidecar(tmp_path, clock) as s:
        push(s)
        assert windows(s).get(("hour", None), Decimal(0)) == 0
        call(s, "ann")
        s.records(1)
        pull_and_ack(s)  # the next checkpoint holds only slots that still count
    stored = checkpoint_module.Checkpoint.decode((tmp_path / "checkpoint.json").read_bytes())
    assert stored.loose == {}
    slots = {(limit, key): list(v) for (limit, _), keys in stored.slots[NAME].items() for key, v in keys.items()}
    assert sorted(slots) == [("day", None), ("hour", None), ("per-user", "ann"), ("usd", None), ("user-10m", "ann")]
    assert all(len(v) == 1 for v in slots.values()), "yesterday's day and last hour's buckets are gone"


@pytest.mark.parametrize("damage", ["truncated", "edited"])
def test_an_unreadable_checkpoint_is_logged_and_failmode_closed_refuses_until_the_window_resets(
    spent: tuple[Path, list[dict[str, Any]], dict[tuple[str, str | None], Decimal]],
    caplog: pytest.LogCaptureFixture, damage: str,
) -> None:
    ledger, records, _ = spent
    path = ledger / "checkpoint.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data.replace(b'"cursor":3', b'"cursor":9'))
    caplog.set_level(logging.ERROR, logger="tokenbudget_sidecar.checkpoint")
    with sidecar(ledger) as s:
        push(s)
        assert "usage checkpoint unreadable" in caplog.text
        assert (ledger / "checkpoint.json.corrupt").exists(), "kept for a post-mortem"
        unacked = sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records[3:])
        assert windows(s)["day", None] == unacked, "what is known still counts"
        with pytest.raises(openai.RateLimitError, match="cannot be checked: what this pod spent before"):
            call(s, "carl")
        push(s, spec={**BUDGET["spec"], "failMode": "Open"})  # the budget's own choice when it cannot check
        call(s, "carl")
        s.records(3)
        pull_and_ack(s)  # a new checkpoint, which remembers the loss
    with sidecar(ledger) as s:  # the loss is remembered: a second restart does not forget it
        push(s)
        with pytest.raises(openai.RateLimitError, match="cannot be checked"):
            call(s, "carl")


def test_the_checkpoint_keeps_the_most_recent_keys_of_a_per_user_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint_module, "MAX_KEYS_PER_LIMIT", 2)
    monkeypatch.setattr(budget_module, "MAX_KEYS_PER_LIMIT", 2)
    with sidecar(tmp_path) as s:
        push(s)
        for user in ["ann", "bob", "carl"]:
            call(s, user)
        s.records(3)
        pull_and_ack(s)
        before = windows(s)
    assert ("per-user", "ann") not in before  # the windows dropped the least recently used key
    stored = checkpoint_module.Checkpoint.decode((tmp_path / "checkpoint.json").read_bytes())
    per_user = {shape: set(keys) for (limit, shape), keys in stored.slots[NAME].items() if limit == "per-user"}
    assert list(per_user.values()) == [{"bob", "carl"}], "and so does the checkpoint"
    with sidecar(tmp_path) as s:
        push(s)
        assert windows(s) == before


def test_a_call_refused_by_one_budget_counts_no_request_in_another(tmp_path: Path) -> None:
    """Live counting equals replayed counting: a refused call counts nothing, not even a request."""
    requests = {"namespace": "team-a", "name": "calls", "spec": {
        "selector": {}, "limits": [{"name": "calls", "period": "Day", "requests": 100}]}}
    tiny = {**BUDGET, "spec": {**BUDGET["spec"], "limits": [{"name": "day", "period": "Day", "tokens": 5}]}}
    with sidecar(tmp_path) as s:
        http_post(f"{s.admin}/policy", policy_for(s.upstream, budgets=[requests, tiny]).model_dump(
            mode="json", by_alias=True), method="PUT")
        with pytest.raises(openai.RateLimitError):
            call(s, "ann")
        (calls,) = json.loads(http_get(f"{s.admin}/budgets"))["budgets"][0]["windows"]
    assert calls["used"] == "0"


def test_a_failed_checkpoint_write_keeps_the_records_in_the_ledger(
    spent: tuple[Path, list[dict[str, Any]], dict[tuple[str, str | None], Decimal]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    ledger, _, before = spent
    with sidecar(ledger) as s:
        push(s)
        assert s.state.checkpoint_file is not None

        def full(*_: Any) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(s.state.checkpoint_file, "_write", full)
        pull_and_ack(s)
        assert "usage checkpoint write failed" in caplog.text
    assert json.loads((ledger / "ack.json").read_text())["acked"] == 3, "the ledger kept records 4 and 5"
    with sidecar(ledger) as s:
        push(s)
        assert windows(s) == before


# ----- the real process, SIGKILLed ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(env: dict[str, str], admin: str, stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m tokenbudget_sidecar` (its embedded default policy), ready; killed on the way out."""
    with stderr.open("ab") as err:
        proc = subprocess.Popen([str(PYTHON), "-m", "tokenbudget_sidecar"], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, stderr.read_text()[-2000:]
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                if json.loads(http_get(f"{admin}/readyz"))["ready"]:
                    break
            assert time.monotonic() < deadline, stderr.read_text()[-2000:]
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_a_sigkilled_sidecar_process_refuses_at_its_lease_after_the_restart(tmp_path: Path) -> None:
    """The process is killed (no clean shutdown: nothing flushed, nothing closed) and started again on the
    same ledger directory; the operator then pulls, acknowledges and pushes its policy with a lease."""
    data, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    env = {**os.environ, "TOKENBUDGET_DATA_PORT": str(data), "TOKENBUDGET_ADMIN_PORT": str(admin_port),
           "TOKENBUDGET_DATA_HOST": "127.0.0.1", "TOKENBUDGET_ADMIN_HOST": "127.0.0.1",
           "TOKENBUDGET_LEDGER_DIR": str(tmp_path / "ledger"), "TOKENBUDGET_LOG_LEVEL": "WARNING"}
    with serve_in_thread(app=create_upstream()) as upstream:
        s = Stack(f"http://127.0.0.1:{data}", admin, upstream, None, None)  # type: ignore[arg-type]
        with process(env, admin, tmp_path / "stderr") as proc:
            push(s)
            call(s, "ann", 2)
            assert len(pull_and_ack(s)) == 2
            call(s, "bob", 2)  # answered, hence settled and written: the kernel has the lines
            before = windows(s)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        with process(env, admin, tmp_path / "stderr"):
            assert len(pull_and_ack(s)) == 2  # the operator's round: it sees the new policy version after
            push(s)
            assert windows(s) == before
            start = next(w["periodStart"] for w in json.loads(http_get(f"{admin}/budgets"))["budgets"][0]["windows"]
                         if w["name"] == "day")
            push(s, leases=[{"window": "day", "granted": str(before["day", None] + 10), "periodStart": start,
                             "expiresAt": "2099-01-01T00:00:00Z"}])
            with pytest.raises(openai.RateLimitError, match=r"limit day: this pod's grant has 10 tokens left"):
                call(s, "carl")
