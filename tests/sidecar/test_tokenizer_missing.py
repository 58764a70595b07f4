"""A sidecar without tiktoken's files and without egress starts anyway, counts by the byte bound, says so,
and counts exactly again once the files appear (issue 14, part 3).

A real process: tiktoken's encoding cache is process-wide, and the failure was the process exiting.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import openai
from sidecar_harness import policy_for
from sidecar_process import get_json, get_text, offline_env, sidecar_process

from tokenbudget_sidecar.tokens import cache_file
from tokenbudget_testing.upstream.app import LEDGER, serve_in_thread
from tokenbudget_testing.upstream.app import create_app as create_upstream

PROMPT = "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich."  # non-ASCII: bytes > tokens


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_sidecar_without_encodings_starts_counts_by_bytes_and_recovers_when_the_files_appear(
    tmp_path: Path,
) -> None:
    source = os.environ.get("TIKTOKEN_CACHE_DIR")
    assert source, "TIKTOKEN_CACHE_DIR is not set: run the suite through `make test`"
    empty = tmp_path / "tiktoken"
    empty.mkdir()
    # Exact: count every prompt (the default, Lazy, would count none of these metering-only calls).
    env = offline_env(TIKTOKEN_CACHE_DIR=str(empty), TOKENBUDGET_TOKENIZER_RETRY_S="0.2",
                      TOKENBUDGET_PROMPT_COUNT="Exact")
    upstream_app = create_upstream()
    with serve_in_thread(app=upstream_app) as upstream, sidecar_process(tmp_path, policy_for(upstream), env) as s:
        ready = get_json(f"{s.admin}/readyz")
        assert ready["ready"] is True
        assert any("o200k_base: byte bound" in line for line in ready["detail"]), ready
        metrics = get_text(f"{s.admin}/metrics")
        assert _metric(metrics, 'tokenbudget_tokenizer_available{encoding="o200k_base"}') == 0.0
        assert "tiktoken encoding unavailable" in s.log()

        client = openai.OpenAI(base_url=f"{s.data}/openai/v1", api_key="sk-test", max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
        (served,) = upstream_app[LEDGER].wait_finished(1)
        usage = get_json(f"{s.admin}/usage?after=0")["records"]
        assert len(usage) == 1
        # bytes of every string ("user" too) + framing (2 x 4 for OpenAI's message count + 1, 3 reply
        # priming): an upper bound of any BPE count
        assert usage[0]["prompt_estimate"] == len(PROMPT.encode()) + len(b"user") + 2 * 4 + 3
        assert usage[0]["prompt_estimate"] > served.input_tokens, "the byte bound must err high"
        assert _metric(get_text(f"{s.admin}/metrics"), "tokenbudget_tokenizer_fallback_counts_total") >= 1

        path = cache_file("o200k_base")
        assert path is not None
        # The files appear, whole (as a volume's atomic symlink swap makes them): a half-copied file fails
        # tiktoken's hash check, and tiktoken then deletes it.
        shutil.copy(Path(source) / Path(path).name, empty / "partial")
        os.replace(empty / "partial", empty / Path(path).name)
        deadline = time.monotonic() + 30
        while get_json(f"{s.admin}/readyz")["detail"]:
            assert time.monotonic() < deadline, s.log()[-2000:]
            time.sleep(0.1)
        assert _metric(get_text(f"{s.admin}/metrics"), 'tokenbudget_tokenizer_available{encoding="o200k_base"}') == 1
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
        upstream_app[LEDGER].wait_finished(2)
        usage = get_json(f"{s.admin}/usage?after=0")["records"]
        assert len(usage) == 2
        assert usage[1]["prompt_estimate"] < len(PROMPT.encode()), "exact tiktoken count after recovery"
        assert "tiktoken encoding loaded" in s.log()
