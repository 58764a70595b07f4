"""`make demo`: the whole story in about a minute, on real sidecar processes and the stand-in provider.

1. Metering: the standalone sidecar on the embedded default's shape (no budget) meters a small workload
   made with the OpenAI, Anthropic and Gemini SDKs; its usage records are compared with what the
   provider says it served (an exact match).
2. A team budget with the 50/80/85/95 ladder under a seeded workload, next to its DryRun twin
   (demo_ladder.py), with a live display.
3. A ThinkTier calibrating from observed thinking (demo_thinking.py).
4. A PNG of both (demo_plot.py), whose path is printed last.

Every process runs on loopback: the stand-in provider (tokenbudget_testing.upstream) and one sidecar per
act, each from a policy file. No cluster, no network, no keys.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from tokenbudget_testing import demo_ladder, demo_plot, demo_thinking

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


def _upstreams(url: str) -> list[dict[str, str]]:
    return [{"name": d.lower(), "baseURL": url, "dialect": d} for d in ("OpenAI", "Anthropic", "Gemini")]


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


@dataclass
class Sidecar:
    proc: subprocess.Popen[bytes]
    data: str
    admin: str


def _sidecar(tmp: Path, name: str, policy: str, env: dict[str, str]) -> Sidecar:
    """One sidecar process reading `policy` (YAML or JSON) as its standalone policy file."""
    data_port, admin_port = _free_port(), _free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(policy, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "tokenbudget_sidecar"], env={
        **env, "TOKENBUDGET_POLICY_FILE": str(path), "TOKENBUDGET_DATA_PORT": str(data_port),
        "TOKENBUDGET_ADMIN_PORT": str(admin_port), "TOKENBUDGET_ADMIN_HOST": "127.0.0.1",
        "TOKENBUDGET_LEDGER_DIR": str(tmp / f"ledger-{name}"), "TOKENBUDGET_LOG_LEVEL": "WARNING"})
    return Sidecar(proc, f"http://127.0.0.1:{data_port}", f"http://127.0.0.1:{admin_port}")


def default_out() -> Path:
    cache = Path(os.environ.get("TOKENBUDGET_CACHE") or Path.home() / ".cache" / "tokenbudget")
    return cache / "demo" / "tokenbudget-demo.png"


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    args.add_argument("--out", type=Path, default=default_out(), help="where to write the PNG")
    args.add_argument("--pace", type=float, default=float(os.environ.get("TOKENBUDGET_DEMO_PACE", "0.25")),
                      help="seconds between the budget act's calls, so the display can be followed (0: none)")
    opts = args.parse_args(argv)
    out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    env = dict(os.environ)
    up_port = _free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        procs = [subprocess.Popen([sys.executable, "-m", "tokenbudget_testing.upstream", "--host", "127.0.0.1",
                                   "--port", str(up_port)], env=env)]
        try:
            metering = _sidecar(tmp, "metering", POLICY.format(url=upstream), env)
            enforce = _sidecar(tmp, "enforce", json.dumps(
                {"upstreams": _upstreams(upstream), "budgets": demo_ladder.budget_policy("Enforce")}), env)
            twin = _sidecar(tmp, "twin", json.dumps(
                {"upstreams": _upstreams(upstream), "budgets": demo_ladder.budget_policy("DryRun")}), env)
            think = _sidecar(tmp, "think", json.dumps(
                {"upstreams": _upstreams(upstream), "thinkTiers": demo_thinking.tier_policy()}), env)
            sidecars = [metering, enforce, twin, think]
            procs += [s.proc for s in sidecars]
            _wait(f"{upstream}/_upstream/served", procs[0], "the test upstream")
            for s in sidecars:
                _wait(f"{s.admin}/readyz", s.proc, "a sidecar")
            out.print(Rule("1. Metering through the three SDKs"))
            print(f"Sidecar on {metering.data} (apps use /openai/v1, /anthropic, /gemini); "
                  f"provider stand-in on {upstream}.\n\nWorkload through the official SDKs:")
            workload(metering.data)
            time.sleep(0.2)  # records settle just after each response ends
            summary(metering.admin, upstream)
            out.print()
            out.print(Rule(f"2. A team budget: {demo_ladder.LIMIT_TOKENS:,} tokens an hour, alert 50 %, throttle 80 %, "
                           "downgrade 85 %, block 95 %"))
            ladder = demo_ladder.run(enforce.data, enforce.admin, twin.data, twin.admin, out, opts.pace)
            out.print()
            out.print(Rule("3. A ThinkTier calibrating"))
            calibration = demo_thinking.run(think.data, think.admin, out, opts.pace / 5)
            out.print()
            out.print(Rule("4. The picture"))
            path = demo_plot.draw(ladder, calibration, opts.out)
            print(f"Wrote {path.resolve()}")
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
