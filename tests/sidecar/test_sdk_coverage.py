"""docs/sdk-coverage.md lists every method of the installed SDKs and how the sidecar handles each (issue 14).

The methods are enumerated by introspection of the clients' resource classes
(testing/tokenbudget_testing/sdk_methods.py), so an SDK upgrade that adds one fails here until the document is
regenerated (`python -m tokenbudget_testing.sdk_coverage > docs/sdk-coverage.md`) and read; a change in the
sidecar's routing that handles a method differently fails too.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path

from tokenbudget_testing.sdk_coverage import HANDLING, document

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk-coverage.md"
ROW = re.compile(r"^\| `([\w.]+)` \| [^|]* \| (\w+) \|$")
SECTION = re.compile(r"^## (.+)$")


def methods(text: str) -> dict[tuple[str, str], str]:
    """(section, method) -> handling, from the document's tables."""
    out: dict[tuple[str, str], str] = {}
    section = ""
    for line in text.splitlines():
        if (head := SECTION.match(line)) is not None:
            section = head.group(1)
        elif section and (row := ROW.match(line)) is not None:
            out[(section, row.group(1))] = row.group(2)
    return out


def test_every_sdk_method_is_in_the_document_with_the_handling_the_sidecar_gives_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # google-genai's "experimental" notes
        fresh = document()
    now, written = methods(fresh), methods(DOC.read_text())
    missing = sorted(f"{s}: {m}" for s, m in now.keys() - written.keys())
    assert not missing, f"{len(missing)} SDK methods are missing from docs/sdk-coverage.md: {missing[:20]}"
    changed = sorted(f"{s}: {m} is {now[(s, m)]}, the document says {written[(s, m)]}"
                     for s, m in now.keys() & written.keys() if now[(s, m)] != written[(s, m)])
    assert not changed, changed[:20]
    assert set(now.values()) <= set(HANDLING)
    assert len(now) > 1000, "the enumeration found the SDKs' resources"
    diff = "".join(difflib.unified_diff(DOC.read_text().splitlines(True), fresh.splitlines(True), n=0))
    assert not diff, f"regenerate docs/sdk-coverage.md:\n{diff[:3000]}"


def test_the_core_calls_are_metered_in_the_document() -> None:
    written = methods(DOC.read_text())
    for section, name in [("openai (`OpenAI`)", "chat.completions.create"), ("openai (`OpenAI`)", "responses.create"),
                          ("openai (`OpenAI`)", "images.generate"), ("openai (`AzureOpenAI`)", "images.generate"),
                          ("openai (`OpenAI`)", "audio.transcriptions.create"), ("anthropic", "messages.create"),
                          ("google-genai", "models.generate_content"), ("google-genai", "models.embed_content")]:
        assert written[(section, name)] == "metered", (section, name)
    assert written[("openai (`OpenAI`)", "files.create")] == "unmetered"
    assert written[("openai (`OpenAI`)", "responses.retrieve")] == "deferred"
    for section, name in [("openai (`OpenAI`)", "realtime.connect"), ("openai (`OpenAI`)", "responses.connect"),
                          ("openai (`AzureOpenAI`)", "realtime.connect"), ("google-genai", "aio.live.connect")]:
        assert written[(section, name)] == "session", (section, name)  # WebSockets: metered per usage report
    assert written[("openai (`OpenAI`)", "realtime.translations.connect")] == "unmeteredsession"
