"""JSON logs: one object per line. Records carry counts and ids, never prompts, completions or keys."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    """`extra={"record": {...}}` is logged as the line's "call" object; `extra={"record_json": b"{...}"}`, JSON
    already serialized (a usage record as the ledger wrote it), is spliced in as is, not encoded again."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        extra = getattr(record, "record", None)
        if extra is not None:
            out["call"] = extra
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        text = json.dumps(out, default=str)
        raw: bytes | None = getattr(record, "record_json", None)
        if raw is None:
            return text
        return f'{text[:-1]}, "call": {raw.decode().rstrip()}}}'


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
