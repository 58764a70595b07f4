"""Dollars: overrides with context tiers, and a fast catalog path that must agree with genai-prices."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenbudget_api.tokenbudget import ModelPrice
from tokenbudget_api.usage import Usage
from tokenbudget_sidecar import pricing
from tokenbudget_sidecar.pricing import PriceBook, catalog_price

MODELS = ["gpt-4o", "gpt-4o-mini", "o4-mini", "gpt-5", "gpt-4.1-nano", "claude-sonnet-4-5", "claude-haiku-4-5",
          "gemini-2.5-flash", "gemini-2.5-pro", "claude-opus-4-1", "gpt-4.1"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(MODELS), st.integers(0, 400_000), st.integers(0, 100), st.integers(0, 100),
       st.integers(0, 50_000))
def test_the_catalog_fast_path_prices_exactly_like_genai_prices(
    model: str, inp: int, cached_pct: int, write_pct: int, out: int,
) -> None:
    cached = inp * cached_pct // 100
    write = (inp - cached) * write_pct // 100
    usage = Usage(input_tokens=inp, cached_input_tokens=cached, cache_creation_input_tokens=write,
                  output_tokens=out)
    cost, source = PriceBook([]).cost(model, "https://example.invalid", usage)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=inp, cache_read_tokens=cached, cache_write_tokens=write,
                           output_tokens=out), model).total_price
    assert source == "catalog"
    assert cost == expected


def test_an_unknown_model_is_unpriced_and_an_override_wins_with_its_context_tier() -> None:
    assert catalog_price("qwen-max", "https://dashscope.example") is None
    assert PriceBook([]).cost("qwen-max", "https://x", Usage(input_tokens=10)) == (None, None)
    flash = ModelPrice.model_validate({
        "model": "qwen-flash", "inputPerMillion": "0.05", "outputPerMillion": "0.40",
        "tiers": [{"aboveInputTokens": 256000, "inputPerMillion": "0.25", "outputPerMillion": "2.00"}]})
    book = PriceBook([flash])
    short = book.cost("qwen-flash", "https://x", Usage(input_tokens=1_000_000 // 4, output_tokens=1000))
    long = book.cost("qwen-flash", "https://x", Usage(input_tokens=300_000, output_tokens=1000))
    assert short == (Decimal("0.0125") + Decimal("0.0004"), "override")
    assert long == (Decimal("0.075") + Decimal("0.002"), "override")


def test_the_books_memo_prices_like_a_fresh_lookup_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each (model, upstream) is resolved once per book (issue 19): the second pricing must equal the first,
    an override must still win over the catalog, and app-chosen model names must not grow it without end."""
    usage = Usage(input_tokens=1200, cached_input_tokens=200, output_tokens=300)
    override = ModelPrice.model_validate({"model": "gpt-4o-mini", "inputPerMillion": "1", "outputPerMillion": "2"})
    plain, priced = PriceBook([]), PriceBook([override])
    for _ in range(2):
        assert plain.cost("gpt-4o-mini", "https://api.openai.com/v1", usage)[1] == "catalog"
        assert priced.cost("gpt-4o-mini", "https://api.openai.com/v1", usage) == (Decimal("0.0018"), "override")
    assert plain.cost("gpt-4o-mini", "https://api.openai.com/v1", usage) == PriceBook([]).cost(
        "gpt-4o-mini", "https://api.openai.com/v1", usage)
    monkeypatch.setattr(pricing, "MAX_REMEMBERED", 8)
    for n in range(50):
        assert plain.cost(f"no-such-model-{n}", "https://x", usage) == (None, None)
    assert len(plain._found) <= 8
