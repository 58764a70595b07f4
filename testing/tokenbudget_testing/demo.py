"""`make demo`: the standalone sidecar metering a small workload made with the official SDKs.

Starts the stand-in provider (tokenbudget_testing.upstream) and the real sidecar as separate processes on
loopback, points the OpenAI, Anthropic and Gemini SDKs at the sidecar by base URL only, runs a few
calls of each kind, then reads the sidecar's usage records from its admin API and prints what it
metered next to what the provider says it served. No cluster, no network, no keys.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

POLICY = """
upstreams:
  - {{name: openai, baseURL: "{url}", dialect: OpenAI}}
  - {{name: anthropic, baseURL: "{url}", dialect: Anthropic}}
  - {{name: gemini, baseURL: "{url}", dialect: Gemini}}
prices:  # the catalog does not know Qwen models: an override prices them
  - {{model: qwen-max, inputPerMillion: "1.60", outputPerMillion: "6.40"}}
onDisconnect: Drain
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:  # loopback only
        return json.loads(resp.read())


def _wait(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            _get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start within 60 s")


def workload(base: str) -> None:
    import anthropic
    import openai
    from google import genai
    from google.genai import types

    oa = openai.OpenAI(base_url=f"{base}/openai/v1", api_key="demo", max_retries=0)
    print("  openai   chat gpt-4o ............", oa.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Say hello."}]).choices[0].finish_reason)
    chunks = list(oa.chat.completions.create(model="gpt-4o-mini", stream=True,
                                             messages=[{"role": "user", "content": "Count to ten."}],
                                             extra_headers={"x-upstream-output-tokens": "40"}))
    print(f"  openai   stream gpt-4o-mini ...... {len(chunks)} chunks, usage metered by the sidecar")
    r = oa.responses.create(model="o4-mini", input="Why is the sky blue?", reasoning={"effort": "medium"},
                            extra_headers={"x-upstream-reasoning-tokens": "3000"})
    print("  openai   responses o4-mini ....... reasoning tokens", r.usage.output_tokens_details.reasoning_tokens
          if r.usage else "?")
    oa.chat.completions.create(model="qwen-max", messages=[{"role": "user", "content": "hi"}])
    print("  openai   chat qwen-max ........... priced by the policy's override")
    try:
        oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                   extra_headers={"x-upstream-fail": "429", "x-upstream-retry-after": "2"})
    except openai.RateLimitError as exc:
        print(f"  openai   provider 429 ............ reached the SDK as RateLimitError (retry-after "
              f"{exc.response.headers.get('retry-after')})")
    an = anthropic.Anthropic(base_url=f"{base}/anthropic", api_key="demo", max_retries=0)
    msg = an.messages.create(model="claude-haiku-4-5", max_tokens=2000, messages=[{"role": "user", "content": "Hi"}],
                             thinking={"type": "enabled", "budget_tokens": 1024},
                             extra_headers={"x-upstream-reasoning-tokens": "800", "x-upstream-cached-tokens": "500"})
    print(f"  anthropic messages claude-haiku-4-5  stop_reason={msg.stop_reason}, 500 tokens read from cache")
    with an.messages.stream(model="claude-haiku-4-5", max_tokens=30, messages=[{"role": "user", "content": "Hi"}],
                            extra_headers={"x-upstream-output-tokens": "100"}) as stream:
        final = stream.get_final_message()
    print(f"  anthropic stream (truncated) ...... stop_reason={final.stop_reason}")
    gm = genai.Client(api_key="demo", http_options=types.HttpOptions(base_url=f"{base}/gemini"))
    cfg = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=2048),
                                      http_options=types.HttpOptions(headers={"x-upstream-reasoning-tokens": "1200"}))
    for _ in gm.models.generate_content_stream(model="gemini-2.5-flash", contents="Name a prime.", config=cfg):
        pass
    print("  gemini   stream gemini-2.5-flash . thoughts counted as output")


def summary(admin: str, upstream: str) -> None:
    records = _get(f"{admin}/usage?after=0")["records"]
    served = _get(f"{upstream}/_upstream/served")
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for rec in records:
        row = rows[(rec["dialect"], rec["model"])]
        row["calls"] += 1
        for key in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"):
            row[key] += rec["usage"][key]
        if rec["cost_usd"] is None:
            row["unpriced"] += bool(rec["usage"]["input_tokens"])  # zero-token errors have no price to miss
        else:
            row["cost"] = row.get("cost", Decimal(0)) + Decimal(rec["cost_usd"])
        row["errors"] += rec["outcome"] != "ok"
    print("\nWhat the sidecar metered (from GET /usage on its admin port):\n")
    head = f"{'provider':10} {'model':18} {'calls':>5} {'input':>7} {'cached':>7} {'output':>7} {'thinking':>8} " \
           f"{'cost USD':>10}  note"
    print(head)
    print("-" * len(head))
    total = Decimal(0)
    for (dialect, model), row in sorted(rows.items()):
        cost = row.get("cost")
        total += cost or 0
        note = ", ".join(([f"{row['unpriced']} unpriced"] if row["unpriced"] else [])
                         + ([f"{row['errors']} provider error"] if row["errors"] else []))
        print(f"{dialect:10} {model:18} {row['calls']:>5} {row['input_tokens']:>7} {row['cached_input_tokens']:>7} "
              f"{row['output_tokens']:>7} {row['reasoning_tokens']:>8} {format(cost or 0, '.6f'):>10}  {note}")
    print(f"\nTotal: {format(total, '.6f')} USD over {len(records)} calls.")
    served_tokens = sum(r["input_tokens"] + r["output_tokens"] for r in served if r["usage_sent"])
    metered_tokens = sum(r["usage"]["input_tokens"] + r["usage"]["output_tokens"] for r in records)
    verdict = "exact" if served_tokens == metered_tokens else "MISMATCH"
    print(f"Provider says it served {served_tokens} tokens; the sidecar metered {metered_tokens}: {verdict}.")


def main() -> None:
    env = dict(os.environ)
    up_port, data_port, admin_port = _free_port(), _free_port(), _free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY.format(url=upstream), encoding="utf-8")
        env.update(TOKENBUDGET_POLICY_FILE=str(policy), TOKENBUDGET_DATA_PORT=str(data_port),
                   TOKENBUDGET_ADMIN_PORT=str(admin_port), TOKENBUDGET_ADMIN_HOST="127.0.0.1",
                   TOKENBUDGET_LEDGER_DIR=str(Path(tmp) / "ledger"), TOKENBUDGET_LOG_LEVEL="WARNING")
        procs = [
            subprocess.Popen([sys.executable, "-m", "tokenbudget_testing.upstream", "--host", "127.0.0.1",
                              "--port", str(up_port)], env=env),
            subprocess.Popen([sys.executable, "-m", "tokenbudget_sidecar"], env=env),
        ]
        try:
            _wait(f"{upstream}/_upstream/served", procs[0], "the test upstream")
            _wait(f"http://127.0.0.1:{admin_port}/readyz", procs[1], "the sidecar")
            print(f"Sidecar on http://127.0.0.1:{data_port} (apps use /openai/v1, /anthropic, /gemini); "
                  f"provider stand-in on {upstream}.\n\nWorkload through the official SDKs:")
            workload(f"http://127.0.0.1:{data_port}")
            time.sleep(0.2)  # records settle just after each response ends
            summary(f"http://127.0.0.1:{admin_port}", upstream)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
