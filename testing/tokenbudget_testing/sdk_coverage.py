"""docs/sdk-coverage.md: every method of the installed SDKs and what the sidecar does with its call.

`python -m tokenbudget_testing.sdk_coverage > docs/sdk-coverage.md` writes it; tests/sidecar/test_sdk_coverage.py
regenerates it and fails on any difference, so an SDK upgrade that adds a method, or a sidecar change that
handles a route differently, shows up as a diff to read and commit.

The handling is not typed by hand: each method's first request (sdk_methods.py) goes through the sidecar's
own routing (the dialect's `operation`, `background.response_id_of`, and the transparent path's rule that
reads and deletes bill nothing). Routes are written as the sidecar sees them, relative to the upstream's
base URL; `x` stands for every id and name.
"""

from __future__ import annotations

import collections
import importlib.metadata
import inspect
import re
import sys
from collections.abc import Iterable

import multidict

from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_sidecar.background import response_id_of
from tokenbudget_sidecar.dialects import DIALECTS, PASSTHROUGH
from tokenbudget_sidecar.transparent import UNBILLED_METHODS
from tokenbudget_sidecar.ws_meters import meter_for

from .sdk_methods import Route, SdkMethod, sdk_methods

SDK_DIALECT = {"openai": DialectName.OPENAI, "azure": DialectName.AZURE_OPENAI, "anthropic": DialectName.ANTHROPIC,
               "genai": DialectName.GEMINI}
SDK_TITLE = {"openai": "openai (`OpenAI`)", "azure": "openai (`AzureOpenAI`)", "anthropic": "anthropic",
             "genai": "google-genai"}
HANDLING = {
    "metered": "metered: usage from the answer (or estimated, flagged), priced, counted in budgets",
    "deferred": "read; the first retrieve/cancel that shows a background Response ended settles it, once",
    "free": "passed through, free: no record",
    "read": "passed through, a read or a delete: no record",
    "unmetered": "passed through, recorded `unmetered` with its route; refused (403) under `unmeteredRoutes: Deny`",
    "local": "no HTTP call (runs in the app)",
    "session": "a WebSocket relayed both ways; each usage report in it (Realtime `response.done`, Responses "
               "`response.completed`, a Gemini Live turn's `usageMetadata`) metered; budgets checked at connect",
    "unmeteredsession": "a WebSocket relayed both ways, recorded `unmetered` once with its route; refused (403) "
                        "under `unmeteredRoutes: Deny`",
    "vertex": "Vertex AI only: never sent to a Gemini API upstream",
    "raw": "a raw request to any path the app names: handled as that path",
}
# Methods whose first request the placeholder call cannot reach (helpers that validate their inputs first),
# read from the SDKs' source.
MANUAL: dict[tuple[str, str], Route] = {
    ("genai", "batches.get"): Route("GET", "/v1beta/batches/x"),
    ("genai", "batches.cancel"): Route("POST", "/v1beta/batches/x:cancel"),
    ("genai", "batches.delete"): Route("DELETE", "/v1beta/batches/x"),
    ("genai", "batches.create"): Route("POST", "/v1beta/models/x:batchGenerateContent"),
    ("genai", "batches.create_embeddings"): Route("POST", "/v1beta/models/x:asyncBatchEmbedContent"),
    ("genai", "files.upload"): Route("POST", "/upload/v1beta/files"),
    ("genai", "files.download"): Route("GET", "/v1beta/files/x:download"),
    ("genai", "files.register_files"): Route("POST", "/v1beta/files:register"),
    ("genai", "file_search_stores.upload_to_file_search_store"):
        Route("POST", "/upload/v1beta/fileSearchStores/x:uploadToFileSearchStore"),
    ("genai", "file_search_stores.download_media"): Route("GET", "/v1beta/fileSearchStores/x/media/x:download"),
    ("genai", "credentials.create"): Route("POST", "/v1beta/credentials"),
    ("genai", "credentials.update"): Route("PATCH", "/v1beta/credentials/x"),
    ("genai", "decisions.create"): Route("POST", "/v1beta/decisions"),
    ("genai", "interactions.create"): Route("POST", "/v1beta/interactions"),
    ("openai", "responses.stream"): Route("POST", "/v1/responses"),
    ("azure", "responses.stream"): Route("POST", "/openai/responses"),
    ("genai", "operations.get"): Route("GET", "/v1beta/models/x/operations/x"),
    ("genai", "triggers.create"): Route("POST", "/v1beta/triggers"),
    ("genai", "voices.create"): Route("POST", "/v1beta/voices"),
    ("genai", "webhooks.create"): Route("POST", "/v1beta/webhooks"),
    ("anthropic", "beta.webhooks.parse_unverified"): Route("local", ""),
    ("openai", "beta.agents.sessions.artifacts.for_result"): Route("local", ""),  # wraps a result, sends nothing
    ("azure", "beta.agents.sessions.artifacts.for_result"): Route("local", ""),
    ("anthropic", "beta.webhooks.unwrap"): Route("local", ""),
    **{(sdk, name): Route("local", "") for sdk in ("openai", "azure")
       for name in ("webhooks.unwrap", "webhooks.verify_signature")},
    **{(sdk, name): Route("POST", prefix + "/files") for sdk, prefix in (("openai", "/v1"), ("azure", "/openai"))
       for name in ("beta.agents.environments.files.prepare", "beta.agents.environments.files.prepare_directory",
                    "beta.agents.environments.files.upload")},  # agents/_files.py: files.create, purpose user_data
    ("openai", "uploads.upload_file_chunked"): Route("POST", "/v1/uploads"),
    ("azure", "uploads.upload_file_chunked"): Route("POST", "/openai/uploads"),
}
# Connect methods that dial wss:// whatever the base URL's scheme (read from the SDKs' source): through the sidecar
# they need its data port on TLS (TOKENBUDGET_DATA_TLS_CERT_FILE / _KEY_FILE) trusted by the app, or, for the
# openai SDK, the client's `websocket_base_url` set to the sidecar's ws:// URL.
WSS_ONLY = frozenset({("openai", "beta.realtime.connect"), ("azure", "beta.realtime.connect"),
                      ("azure", "realtime.connect"), ("genai", "aio.live.connect"),
                      ("genai", "aio.live.music.connect")})
WSS_NOTE = " (wss://)"
VERTEX_ONLY = frozenset({  # "only supported in Gemini Enterprise Agent Platform mode"
    "models.compute_tokens", "models.edit_image", "models.generate_images", "models.generate_videos",
    "models.recontext_image", "models.segment_image", "models.upscale_image", "tunings.list",
    "tunings.validate_reward"})
CALL = re.compile(r"self\._(get|post|delete|patch|put|get_api_list)\(\s*(?:path_template\()?\s*f?\"(/[^\"]*)\"")


def from_source(sdk: str, method: SdkMethod, resource_cls: type | None) -> Route | None:
    """The route a method's own source names in its `self._post("/...")` call (openai and anthropic)."""
    if resource_cls is None:
        return None
    fn = getattr(resource_cls, method.name.rsplit(".", 1)[1], None)
    if fn is None:
        return None
    match = CALL.search(inspect.getsource(fn))
    if match is None:
        return None
    verb = "GET" if match.group(1) == "get_api_list" else match.group(1).upper()
    path = re.sub(r"\{[^}]+\}", "x", match.group(2))
    return Route(verb, {"openai": "/v1", "azure": "/openai", "anthropic": ""}.get(sdk, "") + path)


def classify(sdk: str, name: str, route: Route | None) -> str:
    if name.rsplit(".", 1)[1].startswith("do_request"):
        return "raw"
    if sdk == "genai" and name in VERTEX_ONLY:
        return "vertex"
    if route is None:
        raise ValueError(f"{sdk} {name}: no route found; add it to MANUAL")
    if route.method == "local":
        return "local"
    if route.method == "ws":
        name = DIALECTS[SDK_DIALECT[sdk]].name
        return "session" if meter_for(name, route.path, multidict.MultiDict()) is not None else "unmeteredsession"
    if response_id_of(route.method, route.path) is not None:
        return "deferred"
    operation = DIALECTS[SDK_DIALECT[sdk]].operation(route.method, route.path)
    if operation == PASSTHROUGH:
        return "free"
    if operation is not None:
        return "metered"
    return "read" if route.method in UNBILLED_METHODS else "unmetered"


def rows(methods: Iterable[SdkMethod], classes: dict[tuple[str, str], type]) -> list[tuple[str, str, str, str]]:
    out = []
    for m in methods:
        route = MANUAL.get((m.sdk, m.name)) or m.route or from_source(m.sdk, m, classes.get((m.sdk, m.name)))
        handling = classify(m.sdk, m.name, route)
        shown = "" if route is None or route.method == "local" else f"{route.method.upper()} {route.path}"
        if (m.sdk, m.name) in WSS_ONLY:
            shown += WSS_NOTE
        out.append((m.sdk, m.name, shown, handling))
    return out


def code(route: str) -> str:
    """The route as code, a `(wss://)` note after it."""
    plain, wss, _ = route.partition(WSS_NOTE)
    return f"`{plain}`{wss}" if plain else ""


def render(table: list[tuple[str, str, str, str]]) -> str:
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("openai", "anthropic", "google-genai"))
    counts = collections.Counter((sdk, h) for sdk, _, _, h in table)
    lines = [
        "# Every SDK method, and what the sidecar does with it",
        "",
        f"Generated from the installed SDKs ({versions}) by `python -m tokenbudget_testing.sdk_coverage >",
        "docs/sdk-coverage.md`; `tests/sidecar/test_sdk_coverage.py` fails when this file and the SDKs or the",
        "sidecar's routing disagree. Each method was called once against a recording transport; its first request",
        "went through the sidecar's own routing. Routes are relative to the upstream's base URL, `x` for any id.",
        "Any call the sidecar forwards can also be refused by a budget before it leaves (limits, ladder, allow",
        "list); `unmetered` calls are refused as a whole by `unmeteredRoutes: Deny`. `WS` is a WebSocket upgrade;",
        "`(wss://)` marks a method that dials TLS whatever the base URL says (README, \"WebSockets\").",
        "",
        "| handling | meaning |",
        "|---|---|",
        *(f"| `{key}` | {text} |" for key, text in HANDLING.items()),
        "",
        "| SDK | " + " | ".join(HANDLING) + " | all |",
        "|---" * (len(HANDLING) + 2) + "|",
    ]
    for sdk in SDK_TITLE:
        per = [counts[(sdk, h)] for h in HANDLING]
        lines.append(f"| {SDK_TITLE[sdk]} | " + " | ".join(str(n) for n in per) + f" | {sum(per)} |")
    for sdk, title in SDK_TITLE.items():
        lines += ["", f"## {title}", "", "| method | first request | handling |", "|---|---|---|"]
        lines += [f"| `{name}` | {code(route)} | {handling} |" for s, name, route, handling in table if s == sdk]
    return "\n".join(lines) + "\n"


def resource_classes() -> dict[tuple[str, str], type]:
    """(sdk, dotted method name) -> the resource class defining it, for the source fallback."""
    from .sdk_methods import clients, resources

    out: dict[tuple[str, str], type] = {}
    for sdk, (client, package, _) in clients([]).items():
        for name, resource, _method in resources(client, package):
            out[(sdk, name)] = type(resource)
    return out


def document() -> str:
    return render(rows(sdk_methods(), resource_classes()))


def main() -> None:
    sys.stdout.write(document())


if __name__ == "__main__":
    main()
