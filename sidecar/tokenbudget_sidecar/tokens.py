"""Pre-flight prompt counting with tiktoken, kept off the event loop for large bodies.

tiktoken releases the GIL while encoding, so a worker thread really runs in parallel with the loop.
Above a hard cap we do not tokenize at all: the UTF-8 byte count is a safe upper bound (no BPE token is
shorter than one byte), which is what an admission check needs.

The same byte bound stands in when an encoding cannot be loaded (no cached file and no egress): a
sidecar is a native sidecar that the app waits for, so failing to start over a tokenizer would take the
app down with it. Counting then errs high (bytes ≥ tokens), never low; `Tokenizer` says so in /readyz,
a metric and a log line, and picks the encoding up when its file appears (see `Tokenizer.retry`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import tiktoken
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

OFFLINE_ENCODINGS = ("o200k_base", "cl100k_base")
SOURCES = {name: f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
           for name in OFFLINE_ENCODINGS}  # what tiktoken loads; its cache key is the sha1 of this URL
REPLY_PRIMING = 3  # <|start|>assistant<|message|>, per OpenAI's cookbook rule
PER_MESSAGE = 4  # framing per message: 3 in OpenAI's cookbook rule (+1 with a name); 4 keeps it an upper bound


@lru_cache(maxsize=1024)
def encoding_name(model: str) -> str:
    """tiktoken's own model table; models it does not know (Claude, Gemini, Qwen) get o200k_base."""
    try:
        name = str(tiktoken.encoding_name_for_model(model))
    except KeyError:
        return "o200k_base"
    return name if name in OFFLINE_ENCODINGS else "o200k_base"


def cache_file(name: str) -> str | None:
    """Where tiktoken looks for `name`'s BPE file (its own rule, tiktoken/load.py); None: caching is off."""
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(
        "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    if cache_dir == "":
        return None
    return os.path.join(cache_dir, hashlib.sha1(SOURCES[name].encode()).hexdigest())


def byte_bound(texts: list[str]) -> int:
    """An upper bound of the tokens of `texts` in any BPE encoding: their UTF-8 size."""
    return sum(len(t.encode("utf-8")) for t in texts)


@dataclass
class Tokenizer:
    """Which encodings are loaded, why the others are not, and how often counting fell back to bytes.

    Process-wide (tiktoken's own encoding cache is), so one instance: `TOKENIZER`.
    `allow_download=False` (the default) never lets tiktoken fetch a missing file: its download has no
    timeout, and a pod whose egress is blackholed would hang the loading thread for good.
    """

    allow_download: bool = False
    encodings: dict[str, tiktoken.Encoding] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # encoding -> why it is not loaded
    fallbacks: int = 0  # counts done with the byte bound because an encoding was missing
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, name: str) -> tiktoken.Encoding | None:
        """The loaded encoding, loading it on first use; None (and counted) when it cannot be had."""
        enc = self.encodings.get(name)
        if enc is not None:
            return enc
        if name not in self.failures:
            enc = self.load(name)
        if enc is None:
            self.fallbacks += 1
        return enc

    def load(self, name: str) -> tiktoken.Encoding | None:
        """Try to load `name` now (blocking: about a second for o200k_base); logs a change of state."""
        with self._lock:
            if name in self.encodings:
                return self.encodings[name]
            path = cache_file(name)
            try:
                if not self.allow_download and (path is None or not os.path.exists(path)):
                    raise FileNotFoundError(f"no cached BPE file at {path} (TIKTOKEN_CACHE_DIR) and downloads "
                                            "are off (TOKENBUDGET_TIKTOKEN_DOWNLOAD)")
                enc = tiktoken.get_encoding(name)
            except Exception as exc:  # any failure means the same: count by bytes
                reason = f"{type(exc).__name__}: {exc}"
                if self.failures.get(name) != reason:
                    log.error("tiktoken encoding unavailable; counting tokens by the UTF-8 byte bound "
                              "(an over-estimate) until it loads", extra={"record": {
                                  "encoding": name, "reason": reason}})
                self.failures[name] = reason
                return None
            self.encodings[name] = enc
            if self.failures.pop(name, None) is not None:
                log.warning("tiktoken encoding loaded; exact counts again", extra={"record": {"encoding": name}})
            return enc

    def check(self, name: str) -> None:
        """Without loading it, note an encoding whose file is missing (readiness detail, metric, log line)."""
        path = cache_file(name)
        if name not in self.encodings and not self.allow_download and (path is None or not os.path.exists(path)):
            self.load(name)  # fails at once without reading anything, and says why

    def retry(self) -> None:
        """Try the encodings that failed again (the retry loop calls this in a thread). One that failed only
        at the start-up check (never needed yet) is not loaded, only cleared, once its file is there."""
        for name in list(self.failures):
            path = cache_file(name)
            if self.fallbacks or path is None or not os.path.exists(path):
                self.load(name)
            elif self.failures.pop(name, None) is not None:
                log.warning("tiktoken encoding file found; it loads on first need",
                            extra={"record": {"encoding": name}})

    @property
    def degraded(self) -> list[str]:
        """Readiness detail: one line per encoding counted by bytes."""
        return [f"tokenizer {name}: byte bound ({why})" for name, why in sorted(self.failures.items())]


TOKENIZER = Tokenizer()


class TokenizerCollector(Collector):
    """`tokenbudget_tokenizer_available{encoding}` and `tokenbudget_tokenizer_fallback_counts_total`."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def collect(self) -> Iterator[Metric]:
        t = self.tokenizer
        available = GaugeMetricFamily("tokenbudget_tokenizer_available", "1 when the tiktoken encoding is "
                                      "loaded, 0 when counts use the UTF-8 byte bound.", labels=["encoding"])
        for name in OFFLINE_ENCODINGS:
            if name in t.encodings or name in t.failures:
                available.add_metric([name], 1.0 if name in t.encodings else 0.0)
        yield available
        yield CounterMetricFamily("tokenbudget_tokenizer_fallback_counts", "Token counts done with the byte "
                                  "bound because a tiktoken encoding could not be loaded.", value=t.fallbacks)


def preload() -> None:
    """Load o200k_base (about a second, ~74 MiB) before the first call needs it; never raises.

    cl100k_base (~32 MiB more) serves only older models (gpt-4, gpt-3.5, embeddings) and loads on the
    first such call, which keeps an idle sidecar's memory down.
    """
    TOKENIZER.load("o200k_base")


async def retry_loop(interval_s: float) -> None:
    """While an encoding is missing, look for it again every `interval_s` (its file may be mounted later)."""
    while True:
        await asyncio.sleep(interval_s)
        if TOKENIZER.failures:
            await asyncio.to_thread(TOKENIZER.retry)


def count_sync(model: str, texts: list[str]) -> int:
    """Tokens of the texts alone (no framing); the byte bound when the encoding is unavailable."""
    enc = TOKENIZER.get(encoding_name(model))
    if enc is None:
        return byte_bound(texts)
    # Not encode_ordinary_batch: it builds a thread pool per call (about 100 us, worse under load).
    return sum(len(enc.encode_ordinary(t)) for t in texts)


class TokenCounter:
    def __init__(self, thread_threshold_bytes: int, hard_cap_bytes: int) -> None:
        self.thread_threshold = thread_threshold_bytes
        self.hard_cap = hard_cap_bytes

    async def count(self, model: str, texts: list[str], messages: int = 1) -> tuple[int, bool]:
        """(tokens, exact) for a prompt of `messages` turns; exact is False when the byte bound was used.

        The figure errs high (per-message framing is counted at 4), as caps and reservations need;
        admission adds `margin_percent` on top for tokenizers other than OpenAI's (Claude, Gemini...).
        """
        size = sum(len(t) for t in texts)  # characters; cheap, and a lower bound of bytes
        framing = messages * PER_MESSAGE
        if size > self.hard_cap:
            return byte_bound(texts) + framing + REPLY_PRIMING, False
        name = encoding_name(model)
        if name not in TOKENIZER.encodings and name in TOKENIZER.failures:
            TOKENIZER.fallbacks += 1
            return byte_bound(texts) + framing + REPLY_PRIMING, False
        if size > self.thread_threshold or name not in TOKENIZER.encodings:  # a first load blocks ~1 s
            counted = await asyncio.to_thread(count_sync, model, texts)
        else:
            counted = count_sync(model, texts)
        return counted + framing + REPLY_PRIMING, name in TOKENIZER.encodings
