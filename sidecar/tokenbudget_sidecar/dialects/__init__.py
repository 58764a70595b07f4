"""Provider wire formats, by the dialect names the API uses."""

from __future__ import annotations

from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_sidecar.dialects.anthropic import AnthropicDialect
from tokenbudget_sidecar.dialects.azure import AzureOpenAIDialect
from tokenbudget_sidecar.dialects.base import PASSTHROUGH, BadRequest, Call, Dialect, Reading, StreamTracker
from tokenbudget_sidecar.dialects.gemini import GeminiDialect
from tokenbudget_sidecar.dialects.openai import OpenAIDialect

DIALECTS: dict[DialectName, Dialect] = {
    DialectName.OPENAI: OpenAIDialect(),
    DialectName.ANTHROPIC: AnthropicDialect(),
    DialectName.GEMINI: GeminiDialect(),
    DialectName.AZURE_OPENAI: AzureOpenAIDialect(),
}

__all__ = ["DIALECTS", "PASSTHROUGH", "BadRequest", "Call", "Dialect", "Reading", "StreamTracker"]
