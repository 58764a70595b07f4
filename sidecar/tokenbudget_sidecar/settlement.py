"""What one call counts, from what the sidecar saw of its answer: the rules settlement applies to a record.

Split from proxy.py (which moves the bytes) because these rules are the part a reader of a record needs:
the provider's usage when it sent any; nothing for a call the provider refused or never got; an estimate,
flagged, when an answer came without usage (but `unmetered` for an image or transcription answer without
usage: dall-e and whisper's text formats bill per image or second and never report it); and for a stream
that broke, the larger of the provider's last figure and an estimate from the text relayed.
"""

from __future__ import annotations

from tokenbudget_api.usage import Outcome, Usage, UsageRecord, UsageSource
from tokenbudget_sidecar import tokens
from tokenbudget_sidecar.dialects import Reading
from tokenbudget_sidecar.pricing import PriceBook

MEDIA = frozenset({"images", "transcriptions"})  # answers that may report no usage by design (dall-e, whisper)


def fill(record: UsageRecord, reading: Reading, prices: PriceBook, base_url: str) -> None:
    """Set the record's usage, source, truncation, response id and price from `reading`."""
    if reading.broke:
        broken_stream(record, reading)
    elif reading.usage is not None and reading.usage.reported:
        record.usage, record.source = reading.usage, UsageSource.PROVIDER
    elif record.outcome is Outcome.UPSTREAM_ERROR or record.status == 0:
        record.usage, record.source = Usage(), UsageSource.NONE
    elif record.operation in MEDIA:  # dall-e images, whisper text answers: billed per image or second, unreported
        record.usage, record.source = Usage(), UsageSource.UNMETERED
    else:
        record.usage = Usage(input_tokens=record.prompt_estimate, output_tokens=estimate_output(record, reading))
        record.source = UsageSource.ESTIMATED
    record.truncated = record.truncated or reading.truncated
    record.response_id = reading.response_id
    if record.usage.reported:
        record.cost_usd, record.price_source = prices.cost(record.model, base_url, record.usage)


def broken_stream(record: UsageRecord, reading: Reading) -> None:
    """A stream that ended without its provider's completion event (reset, in-stream error, Cut hang-up,
    timeout): the provider bills what it generated, and the last usage it sent is only a lower bound
    (Anthropic's message_start says output 1 whatever follows). So output is the larger of that figure
    and an estimate from the text relayed, flagged estimated when the estimate is the larger.
    """
    record.truncated = True
    if reading.error and record.outcome is Outcome.OK:
        record.outcome = Outcome.UPSTREAM_ERROR
    reported = reading.usage or Usage()
    estimate = estimate_output(record, reading)
    output = max(reported.output_tokens, estimate)
    record.usage = reported.model_copy(update={
        "input_tokens": reported.input_tokens or record.prompt_estimate,
        "output_tokens": output,
    })
    estimated = estimate > reported.output_tokens or not reported.input_tokens
    record.source = UsageSource.ESTIMATED if estimated else UsageSource.PROVIDER


def estimate_output(record: UsageRecord, reading: Reading) -> int:
    """Tokens of the text generated, counted as one text: per-chunk counts add a token at most chunk seams
    (a cut Responses stream of 60 billed tokens counted 108 chunk by chunk)."""
    return tokens.count_sync(record.model, ["".join(reading.text)]) if reading.text else 0
