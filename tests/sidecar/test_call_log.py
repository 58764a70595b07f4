"""The per-call log line and the ledger record are one serialization (issue 19): the log must still be one
valid JSON object per line, and its "call" must be exactly the record the ledger holds."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import openai
from sidecar_process import get_text, sidecar_process

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_sidecar.logs import JsonFormatter
from tokenbudget_testing.upstream.app import serve_in_thread


def test_each_calls_log_line_is_json_whose_call_is_the_ledgers_record(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    with serve_in_thread() as url:
        policy = SidecarPolicy.model_validate({"upstreams": [{"name": "openai", "baseURL": url, "dialect": "OpenAI"}]})
        with sidecar_process(tmp_path, policy, ledger_dir=ledger) as sidecar:
            client = openai.OpenAI(base_url=f"{sidecar.data}/openai/v1", api_key="sk-test", max_retries=0)
            for text in ("one", 'two "quoted" \\ and\nnewline', "drei ünd 四"):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
            log = sidecar.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    logged = {c["call"]["request_id"]: c["call"] for c in lines if c["msg"] == "call"}
    on_disk = {}
    for segment in ledger.iterdir():
        for raw in segment.read_bytes().splitlines():
            if raw.startswith(b'{"seq":'):
                record = json.loads(raw)
                on_disk[record["request_id"]] = record
    assert len(logged) == 3
    assert logged == on_disk


def test_the_formatter_splices_ready_json_and_keeps_dict_extras() -> None:
    formatter = JsonFormatter()
    raw = b'{"seq":7,"model":"gpt-4o-mini","decisions":["a \\"b\\""]}\n'
    spliced = logging.LogRecord("x", logging.INFO, __file__, 1, "call", None, None)
    spliced.record_json = raw
    out = json.loads(formatter.format(spliced))
    assert out["msg"] == "call"
    assert out["call"] == json.loads(raw)
    plain = logging.LogRecord("x", logging.WARNING, __file__, 1, "hello %s", ("there",), None)
    plain.record = {"n": 1}
    assert json.loads(formatter.format(plain))["call"] == {"n": 1}


def test_at_warning_the_sidecar_logs_no_call_lines_and_still_records_every_call(tmp_path: Path) -> None:
    """The chart's sidecar.logLevel=WARNING (injected as TOKENBUDGET_LOG_LEVEL) drops the per-call line only."""
    ledger = tmp_path / "ledger"
    with serve_in_thread() as url:
        policy = SidecarPolicy.model_validate({"upstreams": [{"name": "openai", "baseURL": url, "dialect": "OpenAI"}]})
        env = {**os.environ, "TOKENBUDGET_LOG_LEVEL": "WARNING"}
        with sidecar_process(tmp_path, policy, env=env, ledger_dir=ledger) as sidecar:
            client = openai.OpenAI(base_url=f"{sidecar.data}/openai/v1", api_key="sk-test", max_retries=0)
            for _ in range(2):
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
            usage = json.loads(get_text(f"{sidecar.admin}/usage?after=0"))
            log = sidecar.log()
    assert '"msg": "call"' not in log
    assert len(usage["records"]) == 2
