"""Per-call waste features, never the prompt text: what a call re-sent, how its conversation grew, what its
cacheable prefix missed, whether it was an SDK retry, and how much of it was tool output.

How: the prompt is cut into a head and messages (segments.py); each segment is hashed with a key drawn per
process (blake2b, 8 bytes), the hashes are chained, and a bounded memory of recent chains tells how long
a leading prefix an earlier call already sent. Segment token counts are remembered by hash, so only new
segments are tokenized: a growing conversation costs one message's count per turn, not its whole history
(media parts, billed by size not text, are hashed but not counted).
The memory holds hashes, counts and a few ids; nothing in it or in a record can give the text back.

Conversations: the `x-tokenbudget-conversation` header, the budget's own header, the Responses
`conversation` or `previous_response_id`, else the earlier call whose whole prompt this one starts with.
Acceptance reports (`x-tokenbudget-accepted`, POST /outcomes) close a conversation's spend: see `accept`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar

from tokenbudget_api.insights import CACHE_MIN_TOKENS, CONVERSATION_HEADER, RETRY_HEADER
from tokenbudget_api.usage import Acceptance, CallFeatures, Usage, UsageRecord, UsageSource
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.dialects.base import prompt_parts
from tokenbudget_sidecar.pricing import PriceBook
from tokenbudget_sidecar.segments import segments

K = TypeVar("K")
V = TypeVar("V")
MAX_HASHES = 16  # hashes kept in a record: the first 15 leading prefixes and the whole prompt
CAPACITY = 8192  # entries of each memory: a few hundred KiB at most


class LRU(Generic[K, V]):
    """A dict that forgets its least recently used entries past `capacity`."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        if len(self.data) > self.capacity:
            self.data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self.data


@dataclass
class Conversation:
    """What the memory keeps of one conversation: its turns and the spend not yet closed by an acceptance."""

    turn: int = 0
    last_prompt: int = 0
    calls: int = 0
    tokens: int = 0
    cost: Decimal = Decimal(0)
    budgets: list[str] = field(default_factory=list)


@dataclass
class Pending:
    """Features of a call in flight, finished at settlement when the provider's usage is known."""

    features: CallFeatures


def _retry_count(headers: Mapping[str, str]) -> int:
    raw = headers.get(RETRY_HEADER, "").strip()
    return int(raw) if raw.isdigit() else 0


class FeatureMemory:
    """The sidecar's bounded memory of recent prompts, conversations and answers (one per process)."""

    def __init__(self, capacity: int = CAPACITY, key: bytes | None = None) -> None:
        self.key = key or os.urandom(16)
        self.prefixes: LRU[bytes, bool] = LRU(capacity)  # chained hashes of prefixes sent before
        self.counts: LRU[bytes, tuple[int, int]] = LRU(capacity)  # segment hash -> (tokens, tool tokens)
        self.prompts: LRU[bytes, str] = LRU(capacity)  # whole-prompt chain hash -> conversation
        self.answers: LRU[str, str] = LRU(capacity)  # response id -> conversation
        self.conversations: LRU[str, Conversation] = LRU(capacity)
        self.accepted: LRU[str, bool] = LRU(capacity)  # response ids already reported accepted

    def _hash(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, digest_size=8, key=self.key).digest()

    def _conversation_id(self, kind: str, value: str) -> str:
        return self._hash(f"{kind}:{value}".encode()).hex()

    def observe(self, operation: str, model: str, body: dict[str, Any], headers: Mapping[str, str],
                conversation_header: str | None = None) -> Pending:
        """Features of a call about to be forwarded; remembers its prefixes for the calls after it."""
        parts = segments(operation, body)
        chain: list[bytes] = []
        sizes: list[int] = []
        tool_tokens = 0
        previous = b""
        for seg in parts:
            digest = self._hash(json.dumps(seg.value, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=False).encode())
            counted = self.counts.get(digest)
            if counted is None:
                framing = tokens.PER_MESSAGE if seg.message else 0
                counted = (tokens.count_sync(model, prompt_parts(seg.value)[0]) + framing,
                           tokens.count_sync(model, prompt_parts(list(seg.tool))[0]) if seg.tool else 0)
                self.counts.put(digest, counted)
            previous = self._hash(previous + digest)
            chain.append(previous)
            sizes.append(counted[0])
            tool_tokens += counted[1]
        prompt_tokens = sum(sizes)
        repeated, matched = 0, -1
        for i in range(len(chain) - 1, -1, -1):
            if chain[i] in self.prefixes:
                matched = i
                break
        if matched >= 0:
            repeated = sum(sizes[: matched + 1])
        for link in chain:
            self.prefixes.put(link, True)
        retry = _retry_count(headers)
        conv_id, continues = self._conversation(body, headers, chain, conversation_header)
        conv = self.conversations.get(conv_id) or Conversation()
        growth: int | None = None
        if continues and not (retry and conv.turn):
            growth = prompt_tokens - conv.last_prompt
        if not (retry and conv.turn):  # a retry re-sends a turn; it does not add one
            conv.turn += 1
            conv.last_prompt = prompt_tokens
        self.conversations.put(conv_id, conv)
        if chain:
            self.prompts.put(chain[-1], conv_id)
        hashes = [c.hex() for c in chain[: MAX_HASHES - 1]] + ([chain[-1].hex()] if len(chain) >= MAX_HASHES else [])
        features = CallFeatures(context_hashes=hashes, segments=len(parts), prompt_tokens=prompt_tokens,
                                repeated_tokens=repeated, tool_output_tokens=tool_tokens, conversation=conv_id,
                                turn=conv.turn, growth_tokens=growth, retry=retry)
        return Pending(features)

    def _conversation(self, body: dict[str, Any], headers: Mapping[str, str], chain: list[bytes],
                      own_header: str | None) -> tuple[str, bool]:
        """(conversation id, whether the call continues one already seen)."""
        for name in (own_header, CONVERSATION_HEADER):
            value = headers.get(name) if name else None
            if value:
                conv = self._conversation_id("header", value.strip())
                return conv, conv in self.conversations
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if isinstance(conversation, str) and conversation:
            conv = self._conversation_id("conversation", conversation)
            return conv, conv in self.conversations
        previous = body.get("previous_response_id")
        if isinstance(previous, str) and previous:
            known = self.answers.get(previous)
            return (known, True) if known is not None else (self._conversation_id("response", previous), False)
        for link in reversed(chain):  # the longest earlier whole prompt this one starts with
            known = self.prompts.get(link)
            if known is not None:
                return known, True
        return (chain[-1].hex() if chain else self._conversation_id("empty", "")), False

    def settle(self, pending: Pending | None, record: UsageRecord, prices: PriceBook, base_url: str) -> None:
        """Finish the call's features from its usage and price, and add its spend to its conversation."""
        if pending is None:
            return
        f = pending.features
        usage = record.usage
        billed = record.source is not UsageSource.NONE and usage.total_tokens > 0
        if billed:
            f.cacheable_tokens = f.repeated_tokens if f.repeated_tokens >= CACHE_MIN_TOKENS else 0
            f.cache_miss_tokens = max(f.cacheable_tokens - usage.cached_input_tokens, 0)
            cached = min(f.repeated_tokens, usage.cached_input_tokens)
            f.repeated_usd = _price(prices, record.model, base_url, Usage(input_tokens=f.repeated_tokens,
                                                                          cached_input_tokens=cached))
            miss = f.cache_miss_tokens
            full = _price(prices, record.model, base_url, Usage(input_tokens=miss))
            hit = _price(prices, record.model, base_url, Usage(input_tokens=miss, cached_input_tokens=miss))
            f.cache_miss_usd = full - hit if full is not None and hit is not None else None
            f.tool_output_usd = _price(prices, record.model, base_url, Usage(input_tokens=f.tool_output_tokens))
        record.features = f
        conv = self.conversations.get(f.conversation or "")
        if conv is not None:
            conv.calls += 1
            conv.tokens += usage.total_tokens
            conv.cost += record.cost_usd or Decimal(0)
            conv.budgets = list(dict.fromkeys([*conv.budgets, *record.budgets]))
        if record.response_id and f.conversation:
            self.answers.put(record.response_id, f.conversation)

    def accept(self, response_id: str, default_budgets: list[str] | None = None) -> Acceptance | None:
        """An answer reported accepted: its conversation's spend since the last acceptance, then reset.

        None when this id was already reported (a report repeated by a retrying app counts once). An id
        this sidecar never saw still counts as an accepted outcome (of `default_budgets`), with no spend.
        """
        response_id = response_id.strip()
        if not response_id or response_id in self.accepted:
            return None
        self.accepted.put(response_id, True)
        conv_id = self.answers.get(response_id)
        conv = self.conversations.get(conv_id) if conv_id else None
        if conv is None:
            return Acceptance(response_id=response_id, budgets=list(default_budgets or []))
        out = Acceptance(response_id=response_id, conversation=conv_id, budgets=list(conv.budgets),
                         calls=conv.calls, tokens=conv.tokens, cost_usd=conv.cost)
        conv.calls, conv.tokens, conv.cost = 0, 0, Decimal(0)
        return out


def _price(prices: PriceBook, model: str, base_url: str, usage: Usage) -> Decimal | None:
    if usage.input_tokens <= 0:
        return Decimal(0)
    return prices.cost(model, base_url, usage)[0]


__all__ = ["CAPACITY", "LRU", "FeatureMemory", "Pending"]
