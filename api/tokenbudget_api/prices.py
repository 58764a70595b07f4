"""Which models the maintained price catalog (genai-prices) knows: shared by sidecar and operator.

The sidecar prices calls with it; the operator uses the same lookup to warn, on the budget, about models a
spec names that have no price, before the first call is refused or reported unpriced.
"""

from __future__ import annotations

from functools import lru_cache

import genai_prices


@lru_cache(maxsize=4096)
def catalog_price(model: str, base_url: str | None = None) -> genai_prices.types.ModelPrice | None:
    """The catalog's price for a model, found once: the lookup costs tens of microseconds per call.

    Found by the upstream's URL first (a provider's own endpoint), then by model name alone. The price
    in force at first use is kept for the life of the process (catalog prices change rarely, and pods
    are replaced far more often). The catalog's online update is never enabled.
    """
    probe = genai_prices.Usage(input_tokens=1, output_tokens=1)
    for url in (base_url, None) if base_url else (None,):
        try:
            return genai_prices.calc_price(probe, model, provider_api_url=url).model_price
        except LookupError:
            continue
    return None
