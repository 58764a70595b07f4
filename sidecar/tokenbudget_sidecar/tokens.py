"""Pre-flight prompt counting with tiktoken, kept off the event loop for large bodies.

tiktoken releases the GIL while encoding, so a worker thread really runs in parallel with the loop.
Above a hard cap we do not tokenize at all: the UTF-8 byte count is a safe upper bound (no BPE token is
shorter than one byte), which is what an admission check needs.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

import tiktoken

OFFLINE_ENCODINGS = ("o200k_base", "cl100k_base")
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


def preload() -> None:
    """Load o200k_base (about a second, ~74 MiB) before the first call needs it.

    cl100k_base (~32 MiB more) serves only older models (gpt-4, gpt-3.5, embeddings) and loads on the
    first such call, which keeps an idle sidecar's memory down.
    """
    tiktoken.get_encoding("o200k_base")


def count_sync(model: str, texts: list[str]) -> int:
    """Tokens of the texts alone (no framing)."""
    enc = tiktoken.get_encoding(encoding_name(model))
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
            return sum(len(t.encode("utf-8")) for t in texts) + framing + REPLY_PRIMING, False
        if size > self.thread_threshold:
            counted = await asyncio.to_thread(count_sync, model, texts)
        else:
            counted = count_sync(model, texts)
        return counted + framing + REPLY_PRIMING, True
