"""Notifications and the without-sidecar count, with the operator running for real against a real kube-apiserver.

Real processes, the stack of apiserver_stack.py: the operator as the ServiceAccount of deploy/rbac.yaml (so
reading the tokenbudget-notifications Secret is checked against the shipped RBAC), one sidecar on its own loopback
address with a Pod object, the test upstream; and a webhook receiver: an aiohttp server on 127.0.0.1 in a thread
of the test, which records every POST and can be told to fail.
Stage changes are driven as a user would: calls through the openai SDK, then a lower limit in the spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from apiserver_stack import apply, condition, http, sidecar_stack, wait_for
from controlplane import ControlPlane, pod_address
from openai import OpenAI
from operator_harness import OperatorProcess

from tokenbudget_api import names
from tokenbudget_api.notifications import NotificationPayload

NS = "tb-notify"
IP = pod_address(40)
POD = "assistant-a"
# Fast rounds and short retries so a test takes seconds; three POSTs per message per round.
NOTIFY_SETTINGS = {"notify_interval_s": "0.5", "notify_attempts": "3", "notify_backoff_s": "0.2",
                   "notify_backoff_max_s": "1", "notify_retry_after_s": "30", "notify_summary_delay_s": "1"}


@dataclass
class Receiver:
    """A webhook receiver on loopback: every POST recorded per path; `fail[path]` answers those statuses first."""

    url: str = ""
    got: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    fail: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self, path: str) -> list[tuple[str, Any]]:
        with self.lock:
            return list(self.got.get(path, []))


@contextlib.contextmanager
def receiver_running() -> Iterator[Receiver]:
    rec = Receiver()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner: list[web.AppRunner] = []

    async def hook(request: web.Request) -> web.Response:
        path = request.match_info["path"]
        payload = await request.json()
        with rec.lock:
            rec.got.setdefault(path, []).append((request.headers.get(names.IDEMPOTENCY_HEADER, ""), payload))
            answers = rec.fail.get(path) or []
            status = answers.pop(0) if answers else 200
        return web.Response(status=status, text="ok" if status == 200 else "try again")

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/hooks/{path}", hook)
        runner.append(web.AppRunner(app))
        await runner[0].setup()
        site = web.TCPSite(runner[0], "127.0.0.1", 0)
        await site.start()
        rec.url = f"http://127.0.0.1:{runner[0].addresses[0][1]}/hooks"
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10), "the receiver did not start"
    try:
        yield rec
    finally:
        asyncio.run_coroutine_threadsafe(runner[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@dataclass
class NotifyStack:
    kube: ControlPlane
    operator: OperatorProcess
    upstream: str
    receiver: Receiver
    workdir: Path

    def replica(self, name: str) -> OperatorProcess:
        """Another replica of the running operator: same settings and ServiceAccount, its own ports."""
        other = OperatorProcess(self.kube, self.workdir, name)
        env = dict(self.operator.env)
        env["TOKENBUDGET_OPERATOR_WEBHOOK_PORT"] = str(other.webhook_port)
        env["TOKENBUDGET_OPERATOR_WEBHOOK_URL"] = f"https://127.0.0.1:{other.webhook_port}"
        env["TOKENBUDGET_OPERATOR_METRICS_PORT"] = str(other.metrics_port)
        other.env = env
        return other


@pytest.fixture(scope="module")
def nstack(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyStack]:
    workdir: Path = tmp_path_factory.mktemp("notify")
    with (receiver_running() as receiver,
          sidecar_stack(kube, workdir, NS, {POD: IP}, {"app": "assistant"}, **NOTIFY_SETTINGS) as st):
        yield NotifyStack(kube, st.operator, st.upstream, receiver, workdir)


# ----- helpers ---------------------------------------------------------------------------------------------


def budget(name: str, upstream: str, tokens: int, targets: list[dict[str, Any]],
           window: dict[str, Any] | None = None, window_name: str = "daily-tokens") -> dict[str, Any]:
    return {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"matchLabels": {"app": "assistant"}}, "timeZone": "UTC",
                     "limits": [{"name": window_name, "tokens": tokens, **(window or {"period": "Day"})}],
                     "ladder": [{"at": 50, "action": "Alert"}, {"at": 95, "action": "Block"}],
                     "upstreams": [{"name": "openai", "baseURL": upstream, "dialect": "OpenAI"}],
                     "notifications": targets}}


def get_tb(kube: ControlPlane, name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(kube.kubectl("get", "tb", name, "-n", NS, "-o", "json").stdout)
    return found


def enforced(name: str) -> bool:
    policy = http("GET", f"http://{IP}:{names.SIDECAR_ADMIN_PORT}/policy")
    return any(b["name"] == name and all(float(lease["granted"]) > 0 for lease in b.get("leases") or [])
               for b in policy["budgets"])


def spend_and_count(st: NotifyStack, name: str, calls: int) -> int:
    """`calls` chat completions through the sidecar; returns their tokens, once status shows exactly that."""
    wait_for(f"the sidecar to enforce {name}", lambda: enforced(name), timeout=15)
    http("DELETE", f"{st.upstream}/_upstream/served", token=None)
    client = OpenAI(base_url=f"http://{IP}:{names.SIDECAR_DATA_PORT}/openai/v1", api_key="sk-test", max_retries=0)
    for i in range(calls):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=30,
                                       messages=[{"role": "user", "content": f"Tell me about {i}."}])
    client.close()
    served = http("GET", f"{st.upstream}/_upstream/served", token=None)
    expected = sum(int(r["input_tokens"]) + int(r["output_tokens"]) for r in served)
    assert len(served) == calls

    def counted() -> bool:
        windows = (get_tb(st.kube, name).get("status") or {}).get("windows") or []
        return bool(windows) and windows[0]["used"] == str(expected)

    wait_for(f"status of {name} to show {expected} tokens", counted, timeout=15)
    return expected


def to_alert(st: NotifyStack, name: str, targets: list[dict[str, Any]]) -> int:
    """A budget spent to ~66% of a lowered limit: its stage goes Normal -> Alert. Returns the tokens used."""
    apply(st.kube, budget(name, st.upstream, 1_000_000, targets))
    used = spend_and_count(st, name, 3)
    apply(st.kube, budget(name, st.upstream, used * 3 // 2, targets))
    wait_for(f"{name} at stage Alert", lambda: get_tb(st.kube, name)["status"].get("stage") == "Alert", timeout=15)
    return used


def secret(kube: ControlPlane, receiver: Receiver, *keys: str) -> None:
    """The namespace's tokenbudget-notifications Secret, each key the receiver's URL of that path."""
    literals = [f"--from-literal={k}={receiver.url}/{k}" for k in keys]
    made = kube.kubectl("create", "secret", "generic", names.NOTIFICATION_SECRET, "-n", NS, *literals,
                        "--dry-run=client", "-o", "yaml").stdout
    kube.kubectl("apply", "-f", "-", input=made)


def events(kube: ControlPlane, name: str, reason: str) -> list[dict[str, Any]]:
    found = json.loads(kube.kubectl("get", "events", "-n", NS, "-o", "json",
                                    "--field-selector", f"involvedObject.name={name}").stdout)["items"]
    return [e for e in found if e["reason"] == reason]


# ----- tests (in order: the first runs before the Secret exists) ---------------------------------------------


def test_a_missing_secret_gives_a_condition_until_it_exists(nstack: NotifyStack) -> None:
    kube = nstack.kube
    apply(kube, budget("quiet", nstack.upstream, 1_000_000, [{"name": "team", "urlSecretKey": "team"}]))
    # Enforcement is not affected: Ready turns True while Notifications stays False. Both in one snapshot, not
    # Ready read from the first with Notifications False: that one can precede the operator's sight of the pod
    # (Ready False, NoPodsSelected, seen when tests/reconciler runs as a whole).
    tb = wait_for("Notifications False and Ready True", lambda: (t := get_tb(kube, "quiet")) and condition(
        t, "Notifications").get("status") == "False" and condition(t, "Ready").get("status") == "True" and t,
        timeout=15)
    notifications = condition(tb, "Notifications")
    assert notifications["reason"] == "NotificationSecretMissing"
    assert notifications["message"] == f"team: Secret {NS}/tokenbudget-notifications does not exist"

    secret(kube, nstack.receiver, "other")
    wait_for("the key named", lambda: "has no key team" in condition(get_tb(kube, "quiet"), "Notifications").get(
        "message", ""), timeout=15)
    secret(kube, nstack.receiver, "other", "team")
    tb = wait_for("Notifications True", lambda: condition(t := get_tb(kube, "quiet"), "Notifications").get(
        "status") == "True" and t, timeout=15)
    assert condition(tb, "Notifications")["reason"] == "Delivering"
    assert nstack.receiver.posts("team") == []  # Normal: nothing to say yet
    kube.kubectl("delete", "tb", "quiet", "-n", NS)


def test_a_stage_change_sends_one_message_and_an_operator_restart_does_not_resend_it(nstack: NotifyStack) -> None:
    kube, receiver = nstack.kube, nstack.receiver
    secret(kube, receiver, "team", "slack")
    targets = [{"name": "slack", "urlSecretKey": "slack", "format": "Slack"}]
    used = to_alert(nstack, "support", targets)
    alerted = time.monotonic()
    posts = wait_for("one Slack message", lambda: receiver.posts("slack"), timeout=15)
    key, body = posts[0]
    print(f"\nSlack message {time.monotonic() - alerted:.2f} s after status showed Alert (polled): "
          f"{json.dumps(body)}")
    assert set(body) == {"text", "blocks"}
    percent = used * 100 // (used * 3 // 2)
    assert body["text"] == (f":warning: TokenBudget tb-notify/support: ladder stage Normal -> Alert "
                            f"(window daily-tokens at {percent}%)")
    uid = get_tb(kube, "support")["metadata"]["uid"]
    assert key == f"{uid}/slack/stage/1/Normal-Alert"
    tb = wait_for("the delivery recorded in status", lambda: (t := get_tb(kube, "support"))["status"].get(
        "notifications", [{}])[0].get("stage") == "Alert" and t, timeout=15)
    assert tb["status"]["notifications"][0]["sequence"] == 1

    nstack.operator.stop()
    restarted_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    nstack.operator.start()

    def rewritten() -> bool:
        stamp = get_tb(kube, "support")["status"].get("lastUpdated", "")
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")) >= restarted_at

    wait_for("the restarted operator to write status", rewritten, timeout=30)
    time.sleep(3)  # six notify rounds of the restarted operator
    assert len(receiver.posts("slack")) == 1, receiver.posts("slack")

    # The restarted operator does notify: back to Normal is the second message.
    apply(kube, budget("support", nstack.upstream, 1_000_000, targets))
    posts = wait_for("the second message", lambda: len(p := receiver.posts("slack")) == 2 and p, timeout=20)
    assert posts[1][0] == f"{uid}/slack/stage/2/Alert-Normal"
    time.sleep(1)
    assert len(receiver.posts("slack")) == 2
    kube.kubectl("delete", "tb", "support", "-n", NS)


def test_only_the_leader_sends_and_a_new_leader_does_not_resend(nstack: NotifyStack) -> None:
    kube, receiver = nstack.kube, nstack.receiver
    secret(kube, receiver, "team", "slack", "replicated")
    standby = nstack.replica("operator-standby").start()
    try:
        targets = [{"name": "ops", "urlSecretKey": "replicated", "format": "Json"}]
        to_alert(nstack, "replicated", targets)
        wait_for("one message", lambda: receiver.posts("replicated"), timeout=15)
        wait_for("the delivery recorded in status", lambda: get_tb(kube, "replicated")["status"].get(
            "notifications", [{}])[0].get("stage") == "Alert", timeout=15)
        time.sleep(2)  # four notify rounds: the standby sends nothing
        assert len(receiver.posts("replicated")) == 1

        nstack.operator.stop()  # the leader goes: the standby takes the Lease
        wait_for("the standby to lead", lambda: "took leadership" in standby.log_tail(200), timeout=30)
        time.sleep(3)
        assert len(receiver.posts("replicated")) == 1  # the new leader read what was delivered from status

        apply(kube, budget("replicated", nstack.upstream, 1_000_000, targets))
        posts = wait_for("the new leader's message", lambda: len(p := receiver.posts("replicated")) == 2 and p,
                         timeout=20)
        uid = get_tb(kube, "replicated")["metadata"]["uid"]
        assert [key for key, _ in posts] == [f"{uid}/ops/stage/1/Normal-Alert", f"{uid}/ops/stage/2/Alert-Normal"]
    finally:
        standby.stop()
        nstack.operator.start()  # the module's operator again, for the tests after this one
    kube.kubectl("delete", "tb", "replicated", "-n", NS)


def test_a_receiver_that_fails_twice_gets_the_message_on_retry(nstack: NotifyStack) -> None:
    kube, receiver = nstack.kube, nstack.receiver
    secret(kube, receiver, "team", "slack", "flaky")
    receiver.fail["flaky"] = [500, 503]
    to_alert(nstack, "flaky", [{"name": "generic", "urlSecretKey": "flaky", "format": "Json"}])
    posts = wait_for("three POSTs", lambda: len(p := receiver.posts("flaky")) >= 3 and p, timeout=20)
    time.sleep(1)
    posts = receiver.posts("flaky")
    assert len(posts) == 3  # two failures, one success, nothing after it
    assert len({key for key, _ in posts}) == 1
    payload = NotificationPayload.model_validate(posts[2][1])
    assert payload.idempotency_key == posts[2][0]
    assert (payload.event.value, payload.target, payload.budget.name) == ("StageChanged", "generic", "flaky")
    assert payload.stage is not None
    assert (payload.stage.previous, payload.stage.current, payload.stage.window) == ("Normal", "Alert", "daily-tokens")
    tb = wait_for("recorded", lambda: (t := get_tb(kube, "flaky"))["status"].get("notifications", [{}])[0].get(
        "stage") == "Alert" and t, timeout=15)
    assert condition(tb, "Notifications")["status"] == "True"
    assert events(kube, "flaky", "NotificationFailed") == []
    kube.kubectl("delete", "tb", "flaky", "-n", NS)


def test_a_receiver_that_keeps_failing_gets_an_event_and_a_condition_without_the_url(nstack: NotifyStack) -> None:
    kube, receiver = nstack.kube, nstack.receiver
    secret(kube, receiver, "team", "slack", "flaky", "down")
    receiver.fail["down"] = [500] * 100
    to_alert(nstack, "unheard", [{"name": "pager", "urlSecretKey": "down", "format": "Json"}])
    event = wait_for("a NotificationFailed event", lambda: events(kube, "unheard", "NotificationFailed"), timeout=20)[0]
    assert event["type"] == "Warning"
    assert event["message"] == "notification target pager: StageChanged not delivered after 3 attempt(s): HTTP 500"
    # (The Secret is cached for 5 s: the key added just now may first show as NotificationSecretMissing.)
    tb = wait_for("Notifications False", lambda: condition(t := get_tb(kube, "unheard"), "Notifications").get(
        "reason") == "NotificationFailed" and t, timeout=15)
    assert condition(tb, "Notifications")["status"] == "False"
    assert receiver.url not in json.dumps(tb["status"])
    record = tb["status"]["notifications"][0]
    assert "failingSince" in record
    assert record.get("stage") is None  # nothing delivered: it is still owed
    assert len(receiver.posts("down")) == 3  # bounded: one round of retries, the next after notify_retry_after_s
    kube.kubectl("delete", "tb", "unheard", "-n", NS)


def test_status_counts_selected_pods_without_the_sidecar_and_shows_remaining(nstack: NotifyStack) -> None:
    kube = nstack.kube
    apply(kube, budget("bypass", nstack.upstream, 1_000_000, []))
    used = spend_and_count(nstack, "bypass", 1)
    window = get_tb(kube, "bypass")["status"]["windows"][0]
    assert window["remaining"] == str(1_000_000 - used)
    missing = condition(get_tb(kube, "bypass"), "SidecarMissing")
    assert (missing["status"], missing["reason"]) == ("False", "AllPodsHaveSidecar")

    legacy = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "assistant-legacy", "namespace": NS,
                                                              "labels": {"app": "assistant"}},
              "spec": {"containers": [{"name": "app", "image": "registry.example.com/assistant:1"}]}}
    kube.kubectl("create", "-f", "-", input=json.dumps(legacy))
    tb = wait_for("the pod counted", lambda: (t := get_tb(kube, "bypass"))["status"]["pods"].get(
        "withoutSidecar") == 1 and t, timeout=15)
    assert tb["status"]["pods"] == {"selected": 1, "synced": 1, "withoutSidecar": 1,
                                    "withoutSidecarPods": ["assistant-legacy"]}
    missing = condition(tb, "SidecarMissing")
    assert (missing["status"], missing["reason"]) == ("True", "PodsWithoutSidecar")
    assert missing["message"].startswith("1 selected pod(s) run without the sidecar, unmetered: assistant-legacy")
    print("\n" + kube.plugin("status", "-n", NS, "bypass"))  # the sample in the report
    doc = json.loads(kube.plugin("status", "-n", NS, "bypass", "-o", "json"))["budgets"][0]
    assert (doc["withoutSidecar"], doc["withoutSidecarCount"]) == (["assistant-legacy"], 1)
    assert doc["windows"][0]["remaining"] == str(1_000_000 - used)

    kube.kubectl("delete", "pod", "assistant-legacy", "-n", NS, "--wait=false")
    tb = wait_for("the pod no longer counted", lambda: (t := get_tb(kube, "bypass"))["status"]["pods"].get(
        "withoutSidecar") == 0 and t, timeout=20)
    assert "withoutSidecarPods" not in tb["status"]["pods"]
    assert condition(tb, "SidecarMissing")["status"] == "False"
    kube.kubectl("delete", "tb", "bypass", "-n", NS)


def test_a_minute_that_ended_is_summarized_with_what_it_spent(nstack: NotifyStack) -> None:
    """A calendar window rolling over: one summary of the period that ended (up to a minute's wait)."""
    kube, receiver = nstack.kube, nstack.receiver
    secret(kube, receiver, "team", "slack", "flaky", "down", "finops")
    wait_for("a minute with room for the calls", lambda: 2 <= dt.datetime.now(dt.UTC).second <= 35, timeout=60,
             interval=0.5)
    targets = [{"name": "finops", "urlSecretKey": "finops", "format": "Json", "events": ["PeriodEnded"]}]
    apply(kube, budget("minutely", nstack.upstream, 100_000, targets, window={"period": "Minute"},
                       window_name="minute-tokens"))
    used = spend_and_count(nstack, "minutely", 2)
    posts = wait_for("the minute's summary", lambda: receiver.posts("finops"), timeout=80, interval=0.5)
    payload = NotificationPayload.model_validate(posts[0][1])
    print(f"\nJson summary: {json.dumps(posts[0][1])}")
    summary = payload.summary
    assert summary is not None
    assert (payload.event.value, summary.window, summary.unit) == ("PeriodEnded", "minute-tokens", "Tokens")
    assert (summary.used, summary.limit, summary.tokens, summary.requests) == (str(used), "100000", used, 2)
    assert summary.period_end - summary.period_start == dt.timedelta(minutes=1)
    assert posts[0][0] == payload.idempotency_key
    assert payload.idempotency_key.endswith(f"/finops/period/minute-tokens/{summary.period_start.isoformat()}")
    kube.kubectl("delete", "tb", "minutely", "-n", NS)
