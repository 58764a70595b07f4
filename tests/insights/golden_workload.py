"""A golden workload with known waste, run through the official openai SDK against a sidecar and the test
upstream: a growing conversation over one long system prompt, a second conversation on the same system
prompt with a tool result, cache hits and misses set by the upstream's headers, and one SDK retry.

The expected features are computed here from the messages themselves (tiktoken o200k_base, 4 framing tokens
per message, as the sidecar counts prompts), never read back from the sidecar.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Any

import openai
import tiktoken

SYSTEM_TEXT = "You answer for the platform team." + " here" * 1200  # > 1024 tokens: cacheable
SECRET_WORDS = ("zebracorn-7781", "quokkalantern", "velvetpylon-42")  # greppable: must appear in no output
PER_MESSAGE = 4


def msg(role: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


SYSTEM = msg("system", SYSTEM_TEXT)
U1 = msg("user", f"First question about {SECRET_WORDS[0]} please.")
A1 = msg("assistant", "Sure here is the answer you asked for.")
U2 = msg("user", "A follow-up question, a little longer than the first one was.")
A2 = msg("assistant", "Sure here is the answer you asked for and it should be quite clear now.")
U3 = msg("user", "And one more.")
V1 = msg("user", f"Another topic: {SECRET_WORDS[1]}.")
W1 = msg("user", "A third topic nobody accepts.")
CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}
TOOL = msg("tool", f"lookup result: {SECRET_WORDS[2]} " + "row " * 300, tool_call_id="call_1")


def tokens(*messages: dict[str, Any]) -> int:
    """The sidecar's count of these messages: every string in them plus 4 per message."""
    enc = tiktoken.get_encoding("o200k_base")
    total = 0
    for m in messages:
        stack: list[Any] = [m]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                total += len(enc.encode_ordinary(item))
            elif isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        total += PER_MESSAGE
    return total


@dataclass(frozen=True)
class Expected:
    """What each metered call's features must be, in call order (the retried call twice)."""

    repeated: list[int]
    cached: list[int]
    cacheable: list[int]
    miss: list[int]
    tool: list[int]
    growth: list[int | None]
    retry: list[int]
    prompt: list[int]
    conversation: list[str]  # a letter per conversation: equal letters, equal ids
    accepted: list[list[int]]  # per acceptance report, the calls (indexes) whose spend it closes


def run(base_url: str, sidecar_url: str) -> Expected:
    """Seven metered calls (the retried one twice) in three conversations; A and B accepted, C never."""
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=2)
    a1, a2, a3 = [SYSTEM, U1], [SYSTEM, U1, A1, U2], [SYSTEM, U1, A1, U2, A2, U3]
    b1, b2, c1 = [SYSTEM, V1], [SYSTEM, V1, CALL, TOOL], [SYSTEM, W1]
    hit3 = tokens(SYSTEM, U1, A1, U2)
    plan: list[tuple[list[dict[str, Any]], dict[str, str]]] = [
        (a1, {}),
        (a2, {"x-upstream-cached-tokens": "0"}),  # a cacheable prefix the provider missed
        (a3, {"x-upstream-cached-tokens": str(hit3)}),  # served from cache
        (b1, {}),  # same system prompt, new conversation: missed; reports A's last answer accepted
        (b2, {"x-upstream-fail": "429", "x-upstream-fail-attempts": "1", "x-upstream-retry-after": "0",
              "x-upstream-cached-tokens": str(tokens(SYSTEM, V1))}),  # a 429, the SDK retries, a hit
        (c1, {}),  # never accepted
    ]
    ids: list[str] = []
    for messages, headers in plan:
        if messages is b1:
            headers = {**headers, "x-tokenbudget-accepted": ids[-1]}
        out = client.chat.completions.create(model="gpt-4o", messages=messages,  # type: ignore[arg-type]
                                             extra_headers={"x-upstream-output-tokens": "5", **headers})
        ids.append(out.id)
        if messages is b2:  # B's answer accepted out of band, on the data port
            req = urllib.request.Request(f"{sidecar_url}/outcomes", data=json.dumps({"responseId": out.id}).encode(),
                                         headers={"content-type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
                assert resp.status == 202
    s, s_u1, s_v1 = tokens(SYSTEM), tokens(SYSTEM, U1), tokens(SYSTEM, V1)
    whole_b2 = tokens(*b2)
    repeated = [0, s_u1, hit3, s, s_v1, whole_b2, s]
    cached = [0, 0, hit3, 0, 0, s_v1, 0]  # the 429 attempt reports nothing
    cacheable = [0, s_u1, hit3, s, 0, whole_b2, s]  # the failed attempt was never billed
    return Expected(
        repeated=repeated, cached=cached, cacheable=cacheable,
        miss=[max(c - h, 0) for c, h in zip(cacheable, cached, strict=True)],
        tool=[0, 0, 0, 0, tokens(TOOL) - PER_MESSAGE, tokens(TOOL) - PER_MESSAGE, 0],  # results, not framing
        growth=[None, tokens(*a2) - tokens(*a1), tokens(*a3) - tokens(*a2), None,
                tokens(*b2) - tokens(*b1), None, None],
        retry=[0, 0, 0, 0, 0, 1, 0],
        prompt=[tokens(*m) for m in (a1, a2, a3, b1, b2, b2, c1)],
        conversation=["A", "A", "A", "B", "B", "B", "C"],
        accepted=[[0, 1, 2], [3, 4, 5]],
    )
