"""A prompt's token count as a range, made exact only when a decision depends on it (issue 19).

Every BPE token is at least one UTF-8 byte, so a prompt's byte size bounds its count from above; each
whitespace-separated run of text is at least one token (tiktoken's pre-tokenizer never joins two runs), so
the runs bound it from below. Both cost a pass over the text and no encoding table: o200k_base alone is
~74 MiB of a sidecar's memory and a second of loading, paid today by every pod whether or not a budget
ever needs an exact count.

Admission holds a call on its upper bound while the answer does not depend on the exact figure, and counts
exactly (off the event loop) when it may: a prompt cap between the bounds, a window whose room the bound
does not fit, a ladder step the bounds straddle (holds.py). Settlement still uses the
provider's usage; a record that has none is counted exactly then. So decisions are those of always-exact
counting (tests/sidecar/test_lazy_counting.py checks it on generated workloads) while holds are larger by
up to bytes/tokens (about 4x for English) until they settle.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenbudget_sidecar.tokens import PER_MESSAGE, REPLY_PRIMING, TokenCounter, byte_bound, count_sync


@dataclass
class PromptCount:
    model: str
    texts: list[str]
    messages: int
    media_tokens: int
    counter: TokenCounter
    low: int
    high: int
    exact: int | None = None

    @classmethod
    def of(cls, counter: TokenCounter, model: str, texts: list[str], messages: int,
           media_tokens: int = 0) -> PromptCount:
        framing = messages * PER_MESSAGE + REPLY_PRIMING + media_tokens
        high = byte_bound(texts) + framing
        low = min(sum(len(t.split()) for t in texts) + framing, high)
        return cls(model, texts, messages, media_tokens, counter, low, high)

    @classmethod
    def exactly(cls, model: str, tokens: int) -> PromptCount:
        """A count made already (the CLI's simulation, tests): known from the start, so no decision ever
        waits on counting, and there is no text to count (an empty counter stands in for tiktoken)."""
        return cls(model, [], 0, 0, TokenCounter(0, 0), tokens, tokens, tokens)

    @property
    def known(self) -> bool:
        return self.exact is not None

    @property
    def value(self) -> int:
        """What a hold is based on: the exact count once made, else the upper bound."""
        return self.exact if self.exact is not None else self.high

    async def count(self) -> int:
        """The exact count (tiktoken with framing, as TokenCounter counts), made off the loop when large or
        when its encoding is not loaded yet; cached."""
        if self.exact is None:
            counted, _ = await self.counter.count(self.model, self.texts, self.messages)
            self.exact = min(counted + self.media_tokens, self.high)
        return self.exact

    def count_now(self) -> int:
        """The exact count on the calling thread, for a decision that cannot wait (a ladder step or a refusal
        in the middle of admission's atomic section; usually already counted by the pre-check)."""
        if self.exact is None:
            if sum(len(t) for t in self.texts) > self.counter.hard_cap:
                self.exact = self.high
            else:
                counted = count_sync(self.model, self.texts) + self.messages * PER_MESSAGE + REPLY_PRIMING
                self.exact = min(counted + self.media_tokens, self.high)
        return self.exact


__all__ = ["PromptCount"]
