"""The hold is never below what the provider bills for a text-and-tools prompt, and media parts are held at
their dialect's allowance instead of being counted as text (issue 13 part 6).

Tool definitions used to be counted by their string values only, so every parameter name and "type" key was
missing from the estimate (under the bill); a base64 image was counted as ~1 token per 1.5 characters of base64
(a 300 KB image of compressed content counted ~270,000 o200k tokens and tripped prompt caps).
The test upstream bills tools as their compact JSON and an image part at a flat figure; the estimate
must stay at or above both.
"""

from __future__ import annotations

import base64
from typing import Any

import anthropic
import openai
from sidecar_harness import stack

from tokenbudget_sidecar.dialects import DIALECTS

TOOLS: list[Any] = [{"type": "function", "function": {
    "name": f"lookup_{i}", "description": "Look a thing up.",
    "parameters": {"type": "object", "properties": {
        f"param_{j}_{name}": {"type": "string"} for j, name in enumerate(("alpha", "beta", "gamma", "delta"))},
        "required": ["param_0_alpha"]}}} for i in range(6)]
IMAGE = "data:image/png;base64," + base64.b64encode(bytes(300_000)).decode()


def test_tools_are_counted_with_their_keys_so_the_estimate_covers_the_bill() -> None:
    with stack() as s:
        client = openai.OpenAI(base_url=s.openai_url, api_key="k", max_retries=0)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                       max_tokens=5)
        (record,) = s.records(1)
    billed = record.usage.input_tokens
    assert billed > 300, "the tools are most of the prompt"
    assert record.prompt_estimate >= billed


def test_an_image_is_held_at_the_dialects_allowance_not_counted_as_base64_text() -> None:
    with stack() as s:
        client = openai.OpenAI(base_url=s.openai_url, api_key="k", max_retries=0)
        content: Any = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": IMAGE}}]
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}],
                                       max_tokens=5)
        claude = anthropic.Anthropic(base_url=s.anthropic_url, api_key="k", max_retries=0)
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE.split(",")[1]}},
            {"type": "text", "text": "What is this?"}]}])
        chat, messages = s.records(2)
    for record, dialect in ((chat, "OpenAI"), (messages, "Anthropic")):
        allowance = DIALECTS[dialect].MEDIA_TOKENS
        assert allowance <= record.prompt_estimate < allowance + 100, (dialect, record.prompt_estimate)
        assert record.prompt_estimate >= record.usage.input_tokens


def test_an_anthropic_text_document_counts_as_text() -> None:
    prompt = DIALECTS["Anthropic"].prompt({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "word " * 50}}]}]})
    assert prompt.media_tokens == 0
    assert "word " * 50 in prompt.texts


def test_gemini_inline_data_is_media() -> None:
    prompt = DIALECTS["Gemini"].prompt({"contents": [{"role": "user", "parts": [
        {"text": "Describe"}, {"inlineData": {"mimeType": "image/png", "data": IMAGE.split(",")[1]}}]}]})
    assert prompt.media_tokens == DIALECTS["Gemini"].MEDIA_TOKENS
    assert set(prompt.texts) == {"Describe", "user"}
