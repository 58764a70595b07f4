"""Intents: a call the sidecar forwards is on disk before the provider sees it, so a crash cannot lose it.

Why: the provider bills a call the moment it runs, but the usage record is written only when the call
settles. A sidecar killed (OOM, SIGKILL, node drain gone wrong) with calls in flight used to leave no
record of them at all: the budget looked less spent than the bill.

So before forwarding, the sidecar appends an *intent* line to the ledger (ledger.py): the record the call
would get if it never settled, the prompt estimate plus the output cap it was admitted with (the worst the
provider can bill, the same figure its hold reserved), priced, flagged `interrupted`, with the budgets the
hold was taken in. The call's own record closes it (same `request_id`); a call that ends without one (a
bug path) writes a close line. At start, the ledger reports every intent nothing closed, and the usage log
appends each as an ordinary record with a new seq (usage_log.py): from there on it is counted, checkpointed
and offered to the operator like any other, and its line closes the intent, so a second restart does not
report it again.

Lines, beside the records' own (`{"seq":…}`)::

    {"intent":{…a UsageRecord…}}
    {"close":"<request_id>"}

Cost: one `model_dump_json` and one `os.write` per call, in the ledger's group commit (no fsync of its own);
`benchmarks/intent_cost.py` measures it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pydantic

from tokenbudget_api.usage import Usage, UsageRecord, UsageSource

if TYPE_CHECKING:
    from tokenbudget_sidecar.dialects import Call
    from tokenbudget_sidecar.pricing import PriceBook

INTENT_PREFIX = b'{"intent":'
CLOSE_PREFIX = b'{"close":'


class Marker(pydantic.BaseModel):
    """An intent line or a close line."""

    intent: UsageRecord | None = None
    close: str | None = None


def encode_intent(record: UsageRecord) -> bytes:
    return INTENT_PREFIX + record.model_dump_json().encode() + b"}\n"


def encode_close(request_id: str) -> bytes:
    return CLOSE_PREFIX + json.dumps(request_id).encode() + b"}\n"


def is_marker(line: bytes) -> bool:
    return line.startswith(INTENT_PREFIX) or line.startswith(CLOSE_PREFIX)


def decode(line: bytes) -> Marker:
    """Raises pydantic.ValidationError for a line that does not parse (the ledger skips it, with a warning)."""
    return Marker.model_validate_json(line)


NO_OUTPUT = frozenset({"embeddings", "embed"})  # operations that generate no output tokens


def interrupted_record(record: UsageRecord, call: Call, *, default_output_tokens: int, budgets: list[str],
                       decisions: list[str], prices: PriceBook, base_url: str) -> UsageRecord:
    """What `record` (an admitted call, not yet forwarded) counts if the sidecar dies before it settles.

    Output: the cap the call was admitted with (its own, a budget's clamp, or the default its hold
    reserved): the provider cannot bill more output than its cap, so the estimate never falls short of a
    call that ran to it. Embeddings generate nothing.
    """
    if call.operation in NO_OUTPUT:
        output = 0
    else:
        output = call.output_cap if call.output_cap is not None else default_output_tokens
    usage = Usage(input_tokens=record.prompt_estimate, output_tokens=output)
    cost, price_source = prices.cost(record.model, base_url, usage)
    return record.model_copy(update={
        "usage": usage, "source": UsageSource.ESTIMATED, "interrupted": True, "cost_usd": cost,
        "price_source": price_source, "budgets": list(budgets), "decisions": list(decisions),
    })
