"""Deterministic prompt-token counting and the generated text.

The test upstream must report prompt sizes a proxy can predict, so it counts with tiktoken
``o200k_base`` (``cl100k_base`` for embeddings, as OpenAI does) and the OpenAI cookbook's chat rule
(docs/wire-formats.md §10.3, vector V20), applied to every dialect after mapping it onto chat messages:

- each message costs 3 tokens, plus the tokens of every value in it (``role``, ``content``, ``name``
  and any other key), plus 1 more when the key is ``name``; the request adds 3 for reply priming;
- a string value counts its tokens; a list is the sum of its items; a content part (dict) with a
  ``text`` (or ``thinking``) string counts that string, an image part counts a flat 85 tokens, any
  other part counts the tokens of its compact JSON; ``None`` counts 0; numbers/bools/other dicts
  count their compact JSON;
- request-level tool definitions (and OpenAI ``response_format`` / Responses ``text.format``) add the
  tokens of their compact JSON (not the cookbook's function formula — an estimate was never promised).

Mapping per dialect: OpenAI Chat messages as they are; Responses ``instructions`` as a system message,
a string ``input`` as one user message, list items with ``role`` as messages and any other item as a
message with no role whose only value is the item's compact JSON; Anthropic ``system`` as a system
message followed by ``messages``; Gemini ``systemInstruction`` as a system message and each entry of
``contents`` as a message of its role whose content is its ``parts``.

Generated text is made of English words that are each exactly one token in both o200k_base and
cl100k_base and stay one token each when concatenated, so N answer tokens are N words and a
tokenizer-based estimate of the output matches the reported count exactly.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

CHAT_ENCODING = "o200k_base"
EMBEDDING_ENCODING = "cl100k_base"
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
IMAGE_PART_TOKENS = 85

_ANSWER_WORDS = (
    "Sure",
    " here",
    " is",
    " the",
    " answer",
    " you",
    " asked",
    " for",
    " and",
    " it",
    " should",
    " be",
    " quite",
    " clear",
    " now",
    " to",
    " every",
    " reader",
)
_THINKING_WORDS = (
    "Let",
    " me",
    " think",
    " about",
    " this",
    " problem",
    " step",
    " by",
    " first",
    " then",
    " check",
    " each",
    " part",
    " again",
    " carefully",
    " before",
    " writing",
    " down",
)


@functools.cache
def encoding(name: str = CHAT_ENCODING) -> tiktoken.Encoding:
    """The tiktoken encoding, loaded once (offline via TIKTOKEN_CACHE_DIR)."""
    return tiktoken.get_encoding(name)


def count_text(text: str, encoding_name: str = CHAT_ENCODING) -> int:
    """Tokens of one string; special-token text is counted as ordinary text, never rejected."""
    return len(encoding(encoding_name).encode(text, disallowed_special=()))


def compact_json(value: Any) -> str:
    """The JSON spelling used whenever a structure (tools, non-text parts) is counted."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def count_value(value: Any) -> int:
    """Tokens of one message value under the rule in the module docstring."""
    if value is None:
        return 0
    if isinstance(value, str):
        return count_text(value)
    if isinstance(value, list):
        return sum(count_value(item) for item in value)
    if isinstance(value, Mapping):
        for key in ("text", "thinking"):
            text = value.get(key)
            if isinstance(text, str):
                return count_text(text)
        kind = value.get("type")
        if kind in ("image", "image_url", "input_image") or "inlineData" in value or "inline_data" in value:
            return IMAGE_PART_TOKENS
    return count_text(compact_json(value))


def count_messages(messages: Iterable[Mapping[str, Any]], extras: Iterable[Any] = ()) -> int:
    """Cookbook chat rule over ``messages`` plus compact-JSON tokens of each non-empty extra."""
    total = REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += count_value(value)
            if key == "name":
                total += TOKENS_PER_NAME
    for extra in extras:
        if extra:
            total += count_text(compact_json(extra))
    return total


def count_embedding_input(value: Any) -> int:
    """Tokens of an embeddings ``input``: strings with cl100k_base, token arrays by their length."""
    if isinstance(value, str):
        return count_text(value, EMBEDDING_ENCODING)
    if isinstance(value, list):
        if all(isinstance(item, int) for item in value):
            return len(value)
        return sum(count_embedding_input(item) for item in value)
    return 0


def _words(vocabulary: tuple[str, ...], count: int) -> list[str]:
    """``count`` one-token words; after the first, only space-led words so no two ever merge."""
    if count <= 0:
        return []
    tail = vocabulary[1:]
    return [vocabulary[0]] + [tail[i % len(tail)] for i in range(count - 1)]


def answer_words(count: int) -> list[str]:
    """The visible answer, one token per word."""
    return _words(_ANSWER_WORDS, count)


def thinking_words(count: int) -> list[str]:
    """The thinking text, one token per word."""
    return _words(_THINKING_WORDS, count)


def group(words: list[str], per_chunk: int) -> list[tuple[str, int]]:
    """Words joined into deltas of ``per_chunk`` tokens: (text, token count) pairs."""
    return [("".join(words[i : i + per_chunk]), len(words[i : i + per_chunk])) for i in range(0, len(words), per_chunk)]
