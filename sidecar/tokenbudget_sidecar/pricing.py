"""Dollars for a call: the policy's per-model overrides first, then the genai-prices catalog.

An unknown model is reported as unpriced (cost None), never silently priced at zero. The catalog's
online update is never enabled here: pods price from the package they ship with.
"""

from __future__ import annotations

from decimal import Decimal
from functools import lru_cache

import genai_prices

from tokenbudget_api.tokenbudget import ModelPrice
from tokenbudget_sidecar.usage import Usage

MILLION = Decimal(1_000_000)


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


@lru_cache(maxsize=4096)
def _catalog_knows(model: str, base_url: str) -> tuple[str | None, bool]:
    """Which lookup finds the model: by the upstream's URL, by model name alone, or none (cached)."""
    probe = genai_prices.Usage(input_tokens=1, output_tokens=1)
    try:
        genai_prices.calc_price(probe, model, provider_api_url=base_url)
        return base_url, True
    except LookupError:
        pass
    try:
        genai_prices.calc_price(probe, model)
        return None, True
    except LookupError:
        return None, False


class PriceBook:
    def __init__(self, overrides: list[ModelPrice]) -> None:
        self.overrides = {p.model: p for p in overrides}

    def cost(self, model: str, base_url: str, usage: Usage) -> tuple[Decimal | None, str | None]:
        """(USD, source) with source "override" or "catalog"; (None, None) when unpriced."""
        override = self.overrides.get(model)
        if override is not None:
            return _override_cost(override, usage), "override"
        url, known = _catalog_knows(model, base_url)
        if not known:
            return None, None
        calc = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage.input_tokens,
                cache_read_tokens=usage.cached_input_tokens,
                cache_write_tokens=usage.cache_creation_input_tokens,
                output_tokens=usage.output_tokens,
            ),
            model,
            provider_api_url=url,
        )
        return Decimal(calc.total_price), "catalog"
