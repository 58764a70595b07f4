"""Dollars for a call: the policy's per-model overrides first, then the genai-prices catalog.

An unknown model is reported as unpriced (cost None), never silently priced at zero. The catalog's
online update is never enabled here: pods price from the package they ship with.
"""

from __future__ import annotations

from decimal import Decimal

import genai_prices

from tokenbudget_api.prices import catalog_price
from tokenbudget_api.tokenbudget import ModelPrice
from tokenbudget_api.usage import Usage

MILLION = Decimal(1_000_000)
MAX_REMEMBERED = 4096


def _override_cost(price: ModelPrice, usage: Usage) -> Decimal:
    inp, out = price.input_per_million, price.output_per_million
    for tier in sorted(price.tiers or [], key=lambda t: t.above_input_tokens):
        if usage.input_tokens > tier.above_input_tokens:
            inp, out = tier.input_per_million, tier.output_per_million
    cached = price.cached_input_per_million if price.cached_input_per_million is not None else inp
    write = price.cache_write_per_million if price.cache_write_per_million is not None else inp
    uncached = max(usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_input_tokens, 0)
    total = (uncached * inp + usage.cached_input_tokens * cached + usage.cache_creation_input_tokens * write
             + usage.output_tokens * out)
    return total / MILLION


FAST_FIELDS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
# Any other priced dimension (audio, images, searches) means the fast path would miss something.
OTHER_FIELDS = ("input_audio_mtok", "output_audio_mtok", "cache_audio_read_mtok", "requests_kcount")


def _flat(price: genai_prices.types.ModelPrice) -> Flat | None:
    """Per-million prices when they are plain numbers (no context tiers, no other dimensions)."""
    values = [getattr(price, name, None) for name in FAST_FIELDS]
    if any(getattr(price, name, None) is not None for name in OTHER_FIELDS):
        return None
    if not all(v is None or isinstance(v, Decimal) for v in values) or values[0] is None or values[1] is None:
        return None
    inp, out, read, write = (v if isinstance(v, Decimal) else None for v in values)
    assert inp is not None
    assert out is not None
    return inp, out, read if read is not None else inp, write


def _media(usage: Usage) -> bool:
    return bool(usage.input_image_tokens or usage.input_audio_tokens or usage.output_image_tokens
                or usage.output_audio_tokens or usage.cached_input_audio_tokens or usage.audio_seconds)


Flat = tuple[Decimal, Decimal, Decimal, Decimal | None]


def catalog_cost(price: genai_prices.types.ModelPrice, usage: Usage, flat: Flat | None = None) -> Decimal:
    """`flat`: `_flat(price)` when the caller has it already (PriceBook keeps it per model)."""
    flat = None if _media(usage) else flat or _flat(price)
    if flat is None:  # tiered or multi-dimensional: let the catalog do it
        media: dict[str, int | Decimal] = {}
        if usage.input_image_tokens:  # image and audio shares are subsets of the totals, as the catalog reads them
            media["input_image_tokens"] = usage.input_image_tokens
        if usage.input_audio_tokens:
            media["input_audio_tokens"] = usage.input_audio_tokens
        if usage.output_image_tokens:
            media["output_image_tokens"] = usage.output_image_tokens
        if usage.output_audio_tokens:  # Realtime, Gemini Live: audio out costs several times text out
            media["output_audio_tokens"] = usage.output_audio_tokens
        if usage.cached_input_audio_tokens:
            media["cache_audio_read_tokens"] = usage.cached_input_audio_tokens
        if usage.audio_seconds:  # whisper-1: billed by the second of input audio
            seconds = Decimal(str(usage.audio_seconds))
            media["audio_seconds"] = media["input_audio_seconds"] = seconds
        return Decimal(price.calc_price(genai_prices.Usage(
            input_tokens=usage.input_tokens, cache_read_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_creation_input_tokens, output_tokens=usage.output_tokens, **media,
        ))["total_price"])
    inp, out, read, write = flat
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_creation_input_tokens
    total = uncached * inp + usage.cached_input_tokens * read + usage.output_tokens * out
    total += usage.cache_creation_input_tokens * (write if write is not None else inp)
    return total / MILLION


class PriceBook:
    """The prices of one policy (a push builds a new book): each (model, upstream) is resolved once, override
    or catalog entry and its flat per-million figures, instead of on each of a call's two pricings."""

    def __init__(self, overrides: list[ModelPrice], aliases: dict[str, str] | None = None) -> None:
        self.overrides = {p.model: p for p in overrides}
        self.aliases = aliases or {}  # Azure deployment name -> the model it serves
        self._found: dict[tuple[str, str], tuple[ModelPrice | genai_prices.types.ModelPrice, Flat | None] | None] = {}

    def cost(self, model: str, base_url: str, usage: Usage) -> tuple[Decimal | None, str | None]:
        """(USD, source) with source "override" or "catalog"; (None, None) when unpriced.

        An override for the name itself wins (a deployment may be priced as such), then the model it aliases.
        """
        key = (model, base_url)
        if key in self._found:
            found = self._found[key]
        else:
            if len(self._found) >= MAX_REMEMBERED:  # model names come from apps: bounded like catalog_price's
                self._found.clear()
            found = self._found[key] = self._find(model, base_url)
        if found is None:
            return None, None
        price, flat = found
        if isinstance(price, ModelPrice):
            return _override_cost(price, usage), "override"
        return catalog_cost(price, usage, flat), "catalog"

    def _find(self, model: str, base_url: str) -> tuple[ModelPrice | genai_prices.types.ModelPrice, Flat | None] | None:
        if model not in self.overrides:
            model = self.aliases.get(model, model)
        override = self.overrides.get(model)
        if override is not None:
            return override, None
        price = catalog_price(model, base_url)
        return None if price is None else (price, _flat(price))
