"""An enforcing budget and its DryRun twin over the same seeded workload, each on three real sidecar
processes, with the real operator leasing both on a real kube-apiserver (issue 13, part 2): the twin's
`status.dryRun` Blocks are what the enforcer refused, and both statuses show what their sidecars served.

tests/reconciler/test_dry_run_fleet.py holds the same comparison on the sidecar's admission code with the
allocator run by hand over 20 seeds; this one runs it as a cluster does, lease rounds on their own timers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from apiserver_stack import Sidecar, Stack, apply, budget, extra_sidecars, sidecar_stack, wait_for
from controlplane import ControlPlane, pod_address

NS = "tb-dryrun-twin"  # its own namespace and addresses: never another module's
ENFORCING = {f"enforce-{i}": pod_address(50 + i) for i in range(3)}
TWINS = {f"twin-{i}": pod_address(53 + i) for i in range(3)}
LIMIT, CALLS = 3_000, 90  # ~60 tokens a call: the fleets cross the limit about two thirds of the way
# A refusal for want of a grant waits for lease rounds (0.5 s here) up to this long, instead of 5 s: near the
# limit a pod's first refusal after each starved mark waits it out (135 s for the test with 5 s, 62 with 1).
SIDECAR_ENV = {"TOKENBUDGET_GRANT_WAIT_S": "1.0"}


@pytest.fixture(scope="module")
def stacks(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, list[Sidecar]]]:
    workdir: Path = tmp_path_factory.mktemp("dryrun-twin")
    with sidecar_stack(kube, workdir, NS, ENFORCING, {"app": "enforce"}, SIDECAR_ENV) as stack, \
            extra_sidecars(stack, NS, TWINS, {"app": "twin"}, SIDECAR_ENV) as twins:
        yield stack, twins


def status(kube: ControlPlane, name: str) -> dict[str, Any]:
    tb = json.loads(kube.kubectl("get", "tb", name, "-n", NS, "-o", "json").stdout)
    found: dict[str, Any] = tb.get("status") or {}
    return found


def test_a_dry_run_twin_on_three_sidecars_would_have_refused_what_its_enforcing_twin_refused(
    stacks: tuple[Stack, list[Sidecar]],
) -> None:
    stack, twins = stacks
    kube = stack.kube
    apply(kube, budget("enforce", stack.upstream, NS, selector={"app": "enforce"}, tokens=LIMIT))
    twin_budget = budget("twin", stack.upstream, NS, selector={"app": "twin"}, tokens=LIMIT)
    twin_budget["spec"]["enforcement"] = "DryRun"
    apply(kube, twin_budget)
    for sidecars, key in ((stack.sidecars, f"{NS}/enforce"), (twins, f"{NS}/twin")):
        for s in sidecars:
            wait_for(f"{s.pod} to hold a grant of {key}", lambda s=s, key=key: key in s.budgets() and s.leased(key),
                     timeout=20)

    def client(s: Sidecar) -> openai.OpenAI:
        return openai.OpenAI(base_url=s.openai_url, api_key="unused", max_retries=0, timeout=30)

    pairs = [(client(e), client(t)) for e, t in zip(stack.sidecars, twins, strict=True)]
    rng = random.Random(13)
    refused, would, served = 0, 0, {"enforce": 0, "twin": 0}
    for _ in range(CALLS):
        enforcing, twin = rng.choice(pairs)
        words, out = rng.randint(5, 40), rng.randint(10, 40)
        kw: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 40,
                              "messages": [{"role": "user", "content": " ".join(["budget"] * words)}],
                              "extra_headers": {"x-upstream-output-tokens": str(out)}}
        try:
            answer = enforcing.chat.completions.create(**kw)
            assert answer.usage is not None
            served["enforce"] += answer.usage.total_tokens
        except openai.RateLimitError:
            refused += 1
        raw = twin.chat.completions.with_raw_response.create(**kw)
        usage = raw.parse().usage
        assert usage is not None
        served["twin"] += usage.total_tokens
        if "twin:DryRun:Block" in raw.headers.get("x-tokenbudget-dry-run", ""):
            would += 1

    assert refused > CALLS // 5, "the workload must cross the limit for the comparison to mean anything"

    def settled() -> tuple[dict[str, Any], dict[str, Any]] | None:
        enf, tw = status(kube, "enforce"), status(kube, "twin")
        blocks = {d["action"]: d for d in tw.get("dryRun") or []}.get("Block", {})
        used = [int(s["windows"][0]["used"]) if s.get("windows") else -1 for s in (enf, tw)]
        done = (used[0] == served["enforce"] and blocks.get("count") == would
                and used[1] + int(blocks.get("tokens", 0)) == served["twin"])
        return (enf, tw) if done else None

    enf, tw = wait_for("both statuses to show every call", settled, timeout=30, interval=0.25)
    twin_used, enforce_used = int(tw["windows"][0]["used"]), int(enf["windows"][0]["used"])
    print(f"\nDryRun twin on 3 sidecars, {CALLS} seeded calls: enforcing refused {refused}, twin would have "
          f"blocked {would}; used {enforce_used} vs twin {twin_used} of {LIMIT} (twin served {served['twin']})")
    # The twin never waits for a grant where enforcement does (README, DryRun), and each fleet's lease
    # rounds run on their own timer: seen 0-2 calls apart. 5, below the 7-8 that counting the would-be-refused
    # spend gave (15-20 % more of ~40); that old way also fails the `used` checks (the twin's used was all it served).
    assert abs(would - refused) <= 5
    assert twin_used <= LIMIT
    assert abs(twin_used - enforce_used) <= LIMIT // 10
