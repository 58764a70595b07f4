"""Nothing lost at a crash: a call in flight when the sidecar dies is recorded once at its restart (intents.py).

The ledger tests drive `UsageLog` over a real directory, a process kill modelled by closing the ledger
without an fsync (the page cache keeps what was written, as after SIGKILL). The end-to-end test SIGKILLs a
real sidecar process under 16 concurrent official-SDK clients (openai and anthropic, streamed and plain)
and compares what the operator pulls afterwards with what the test upstream served.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
from sidecar_harness import http_post, policy_for
from sidecar_process import get_json, get_text, sidecar_process

from tokenbudget_api.usage import Usage, UsageRecord, UsageSource
from tokenbudget_sidecar.ledger import SEGMENT_RE, Ledger
from tokenbudget_sidecar.usage_log import UsageLog
from tokenbudget_testing.upstream.app import LEDGER, serve_in_thread
from tokenbudget_testing.upstream.app import create_app as create_upstream

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def record(n: int) -> UsageRecord:
    return UsageRecord(request_id=f"req-{n}", time=T0 + dt.timedelta(seconds=n), upstream="openai",
                       dialect="openai", operation="chat", model="gpt-4o", user=f"user-{n}",
                       usage=Usage(input_tokens=10 + n, output_tokens=3))


def intent(n: int) -> UsageRecord:
    return record(n).model_copy(update={"usage": Usage(input_tokens=10 + n, output_tokens=64),
                                        "source": UsageSource.ESTIMATED, "interrupted": True})


@contextlib.contextmanager
def opened(path: Path, segment_bytes: int = 1 << 20) -> Iterator[UsageLog]:
    log = UsageLog(Ledger(path, sync_interval_s=0.001, segment_bytes=segment_bytes))
    try:
        yield log
    finally:
        log.close()


def killed(log: UsageLog) -> None:
    """A process kill: what was written stays in the page cache, nothing more happens."""
    assert log.ledger is not None
    log.ledger.close(sync=False)


# -- the ledger ---------------------------------------------------------------------------------------------


def test_an_intent_nothing_closed_comes_back_once_as_an_interrupted_record(tmp_path: Path) -> None:
    log = UsageLog(Ledger(tmp_path, sync_interval_s=0.001))
    log.append(record(1))
    log.intend(intent(2))  # in flight at the kill
    killed(log)
    with opened(tmp_path) as log:
        (recovered,) = log.recovered
        assert recovered.request_id == "req-2"
        assert recovered.interrupted
        assert recovered.seq == 2
        assert recovered.usage == Usage(input_tokens=12, output_tokens=64)
        assert [r.request_id for r in log.all()] == ["req-1", "req-2"]
    with opened(tmp_path) as log:
        assert log.recovered == [], "a second restart must not report it again"
        assert [r.seq for r in log.all()] == [1, 2]


def test_an_intent_closed_by_its_record_or_abandoned_is_not_reported(tmp_path: Path) -> None:
    log = UsageLog(Ledger(tmp_path, sync_interval_s=0.001))
    log.intend(intent(1))
    log.append(record(1))  # settled
    log.intend(intent(2))
    log.abandon("req-2")  # ended without a record (a bug path)
    killed(log)
    with opened(tmp_path) as log:
        assert log.recovered == []
        assert [r.request_id for r in log.all()] == ["req-1"]


def test_an_open_intent_survives_compaction_of_the_segment_it_was_written_in(tmp_path: Path) -> None:
    log = UsageLog(Ledger(tmp_path, sync_interval_s=0.001, segment_bytes=2048))
    log.intend(intent(0))  # a long stream, still running while its segment fills and is acknowledged
    for n in range(1, 40):
        log.append(record(n))
        assert log.ledger is not None
        assert log.ledger.sync(timeout=10)
        log.ack(n)
    assert log.ledger is not None
    assert log.ledger.sync(timeout=10)
    first = sorted(p.name for p in tmp_path.iterdir() if SEGMENT_RE.match(p.name))[0]
    assert first != "usage-00000000000000000001.jsonl", "the intent's first segment was compacted away"
    killed(log)
    with opened(tmp_path) as log:
        assert [r.request_id for r in log.recovered] == ["req-0"]
        assert log.recovered[0].seq == 40


def test_a_newest_segment_holding_only_intents_is_continued_at_restart(tmp_path: Path) -> None:
    log = UsageLog(Ledger(tmp_path, sync_interval_s=0.001))
    log.append(record(1))
    assert log.ledger is not None
    assert log.ledger.sync(timeout=10)
    log.ack(1)  # everything acknowledged: the next lines go to a fresh segment named for seq 2
    log.intend(intent(2))
    killed(log)
    with opened(tmp_path) as log:
        assert [(r.request_id, r.seq) for r in log.recovered] == [("req-2", 2)]
    with opened(tmp_path) as log:
        assert log.recovered == []
        assert [r.seq for r in log.all()] == [2]


def test_without_a_ledger_intents_cost_nothing_and_are_not_kept() -> None:
    log = UsageLog()
    log.intend(intent(1))
    log.abandon("req-1")
    assert not log.durable
    assert log.all() == []


# -- a real sidecar process, SIGKILLed under 16 SDK clients --------------------------------------------------

CLIENTS, CALLS_PER_CLIENT, KILL_AFTER_SERVED = 16, 30, 40
MAX_TOKENS = 64
SLOW = {"x-upstream-output-tokens": "20", "x-upstream-chunk-delay-ms": "15"}  # ~0.3 s a call, streamed or not
BUDGET: dict[str, Any] = {"namespace": "team", "name": "crash", "generation": 1, "spec": {
    "selector": {}, "limits": [{"name": "hour-tokens", "duration": "1h", "tokens": 100_000_000},
                               {"name": "hour-calls", "duration": "1h", "requests": 100_000}]}}


def one_call(kind: int, tag: str, oa: openai.OpenAI, an: anthropic.Anthropic) -> None:
    """openai plain, openai streamed, anthropic plain, anthropic streamed; `tag` is the call's user key."""
    messages: Any = [{"role": "user", "content": f"Count to three ({tag})."}]
    if kind == 0:
        oa.chat.completions.create(model="gpt-4o-mini", messages=messages, user=tag, max_tokens=MAX_TOKENS,
                                   extra_headers=SLOW)
    elif kind == 1:
        for _ in oa.chat.completions.create(model="gpt-4o-mini", messages=messages, user=tag, stream=True,
                                            max_tokens=MAX_TOKENS, extra_headers=SLOW):
            pass
    elif kind == 2:
        an.messages.create(model="claude-haiku-4-5", messages=messages, max_tokens=MAX_TOKENS,
                           metadata={"user_id": tag}, extra_headers=SLOW)
    else:
        with an.messages.stream(model="claude-haiku-4-5", messages=messages, max_tokens=MAX_TOKENS,
                                metadata={"user_id": tag}, extra_headers=SLOW) as stream:
            for _ in stream.text_stream:
                pass


def drain(admin: str) -> list[dict[str, Any]]:
    """The operator's rounds until nothing is left: pull after its cursor, acknowledge the page."""
    got: list[dict[str, Any]] = []
    cursor, deadline = 0, time.monotonic() + 20
    while True:
        page = get_json(f"{admin}/usage?after={cursor}&limit=100")
        got += page["records"]
        if page["records"]:
            http_post(f"{admin}/usage/ack", {"cursor": page["cursor"]})
        cursor = page["cursor"]
        if not page["records"] and cursor >= page["lastSeq"]:
            return got
        if not page["records"]:
            assert time.monotonic() < deadline, "records never became durable"
            time.sleep(0.02)


def windows(admin: str) -> dict[str, Decimal]:
    (b,) = get_json(f"{admin}/budgets")["budgets"]
    return {w["name"]: Decimal(w["used"]) for w in b["windows"]}


def test_a_sigkill_under_16_sdk_clients_leaves_exactly_one_record_per_served_call(tmp_path: Path) -> None:
    upstream_app = create_upstream()
    served_ledger = upstream_app[LEDGER]
    ledger_dir = tmp_path / "ledger"
    with serve_in_thread(app=upstream_app) as upstream:
        policy = policy_for(upstream, budgets=[BUDGET])
        with sidecar_process(tmp_path, policy, ledger_dir=ledger_dir, name="first") as sidecar:
            stop = threading.Event()
            failures: list[str] = []

            def client(n: int) -> None:
                oa = openai.OpenAI(base_url=f"{sidecar.data}/openai/v1", api_key="sk-test", max_retries=0)
                an = anthropic.Anthropic(base_url=f"{sidecar.data}/anthropic", api_key="sk-ant-test", max_retries=0)
                for i in range(CALLS_PER_CLIENT):
                    if stop.is_set():
                        return
                    try:
                        one_call((n + i) % 4, f"c{n}-{i}", oa, an)
                    except (openai.APIError, anthropic.APIError, OSError) as exc:  # the sidecar is gone
                        failures.append(type(exc).__name__)
                        return

            threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            acked_early: list[dict[str, Any]] = []
            while len(served_ledger.records) < KILL_AFTER_SERVED:
                if not acked_early and len(served_ledger.records) >= CLIENTS:
                    acked_early = drain(sidecar.admin)  # the operator's round mid-traffic: the checkpoint's part
                assert time.monotonic() < deadline, "the clients did not get going"
                time.sleep(0.01)
            sidecar.proc.kill()  # SIGKILL: no handler runs, nothing is flushed
            sidecar.proc.wait(10)
            stop.set()
            for t in threads:
                t.join(30)
        served = {s.request_body["user"] if "user" in s.request_body else s.request_body["metadata"]["user_id"]: s
                  for s in served_ledger.records}

        with sidecar_process(tmp_path, policy, ledger_dir=ledger_dir, name="second") as sidecar:
            after = drain(sidecar.admin)
            used = windows(sidecar.admin)
            metrics = sidecar.admin + "/metrics"
            interrupted_metric = sum(float(line.rsplit(" ", 1)[1]) for line in
                                     get_text(metrics).splitlines()
                                     if line.startswith("tokenbudget_interrupted_calls_total"))
        with sidecar_process(tmp_path, policy, ledger_dir=ledger_dir, name="third") as sidecar:
            assert drain(sidecar.admin) == [], "an interrupted call is reported once, not at every restart"
            assert windows(sidecar.admin) == used, "the checkpoint holds what the interrupted records counted"

    records = acked_early + after
    assert acked_early, "the operator acknowledged records before the kill"
    by_tag: dict[str, dict[str, Any]] = {}
    for r in records:
        assert r["user"] not in by_tag, f"{r['user']} recorded twice"
        by_tag[r["user"]] = r
    missing = sorted(set(served) - set(by_tag))
    assert not missing, f"calls the upstream served without a record: {missing}"
    for tag, r in by_tag.items():
        s = served.get(tag)
        if r["interrupted"]:
            assert r["source"] == "estimated"
            assert r["response_id"] is None
            assert r["status"] == 0
            assert r["usage"]["output_tokens"] == MAX_TOKENS, "the output cap it was admitted with"
            assert r["budgets"] == ["team/crash"]
            if s is not None:
                assert r["usage"]["output_tokens"] >= s.output_tokens
        else:
            assert s is not None
            assert r["response_id"] == s.request_id
            assert (r["usage"]["input_tokens"], r["usage"]["output_tokens"]) == (s.input_tokens, s.output_tokens)
    interrupted = [r for r in records if r["interrupted"]]
    assert interrupted, "the kill landed with calls in flight"
    assert interrupted_metric == len(interrupted)
    assert {r["user"] for r in interrupted} <= {r["user"] for r in after}, "recovered after the restart"
    assert used["hour-tokens"] == sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records)
    assert used["hour-calls"] == len(records)
    kinds = {(r["dialect"], r["stream"]) for r in interrupted}
    print(f"\n16 clients: upstream served {len(served)}, {len(records)} records, {len(interrupted)} interrupted "
          f"{sorted(kinds)}, {sum(1 for t in by_tag if t not in served)} never reached the upstream")
