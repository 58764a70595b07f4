"""Every resource method of the installed official SDKs, and the HTTP request each one sends first.

Why by introspection: the SDKs grow every release (openai-python adds resources monthly), and a list typed by
hand goes stale silently. Resources are the objects reachable from a client through properties whose classes
live in the SDK's package (openai `client.chat.completions`, anthropic `client.messages.batches`, google-genai
`client.models`; `client.aio` adds the async-only ones); methods are their public functions.

To learn the route of a method, it is called once with placeholder arguments on a client whose HTTP transport
is an `httpx.MockTransport` that records the request and answers 400: nothing leaves the process. A method
that sends nothing is `local` (webhook signature checks, `chats.create`); one that opens a WebSocket is `ws`, with
the path it dials: the openai SDK's connection manager says it (`_prepare_url`); google-genai's are read from its
source (`live.py`, `live_music.py`, `_interactions_websocket.py`) and built here from the client's API version.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2 as httpx
import openai
import pydantic
from google import genai
from google.genai import types as gtypes

SKIP = frozenset({"with_raw_response", "with_streaming_response", "with_options", "copy", "aio"})
WS_METHODS = frozenset({"connect"})  # realtime, responses, live: a WebSocket, not HTTP
GENAI_WS = {"aio.live.connect": "/ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateContent",
            "aio.live.music.connect": "/ws/google.ai.generativelanguage.{v}.GenerativeService.BidiGenerateMusic",
            "aio.interactions.connect": "/{v}/interactions/live"}
AZURE_API_VERSION = "2025-04-01-preview"
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a placeholder in the format the SDK decodes


@dataclass(frozen=True)
class Route:
    method: str  # HTTP method, or "local" / "ws"
    path: str  # as the sidecar sees it: relative to the upstream's base URL, query left out


@dataclass(frozen=True)
class SdkMethod:
    sdk: str  # openai, azure, anthropic, genai
    name: str  # e.g. chat.completions.create; "aio." prefix for google-genai's async-only methods
    route: Route | None  # None: the call failed before sending (placeholder arguments it would not take)


class Sent(Exception):
    """Raised by the transport: the request is recorded, the method's work is done."""


def resources(obj: Any, package: str, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, Any, str]]:
    """(dotted name, resource, method name) for every public method under `obj`."""
    cls = type(obj)
    for name in sorted(dir(cls)):
        if name.startswith("_") or name in SKIP:
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (functools.cached_property, property)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notes of google-genai
                try:
                    value = getattr(obj, name)
                except Exception:  # a property that needs configuration we do not give (Vertex-only)
                    continue
            if (type(value).__module__.startswith(package) and not isinstance(value, (pydantic.BaseModel, type))
                    and depth < 8):
                yield from resources(value, package, f"{prefix}{name}.", depth + 1)
        elif inspect.isfunction(attr) and depth > 0:
            yield prefix + name, obj, name


def placeholder(annotation: object) -> Any:
    """A value the SDK accepts for a parameter of this (string) annotation, well enough to build a request."""
    text = str(annotation)
    if "FileTypes" in text or "FileContent" in text:
        return ("a.bin", b"x")
    if text.startswith("bool"):
        return False
    if text.startswith("int"):
        return 1
    if text.startswith("float"):
        return 1.0
    if text.startswith(("str", "Union[str", "Literal")) or "str |" in text:
        return "x"
    if any(word in text for word in ("Iterable", "List", "Sequence", "list[")):
        return []
    if any(word in text for word in ("Dict", "dict", "Mapping", "Param")):
        return {}
    return "x"


BY_NAME: dict[str, Any] = {"model": "x", "contents": "hi", "file": ("a.bin", b"x"), "video": ("a.bin", b"x"),
                           "image": ("a.png", b"x"), "src": "x", "name": "x", "id": "x"}
MISSING = re.compile(r"missing \d+ required (?:keyword-only |positional )?arguments?: (.*)$")


def arguments(fn: Callable[..., Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.default is inspect.Parameter.empty and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            out[param.name] = BY_NAME.get(param.name, placeholder(param.annotation))
    return out


def call_with_placeholders(fn: Callable[..., Any]) -> Any:
    """`fn` with placeholder arguments; the ones a signature hides (decorated methods) added as its error names them."""
    kwargs = arguments(fn)
    for _ in range(4):
        try:
            return fn(**kwargs)
        except TypeError as exc:
            missing = MISSING.search(str(exc))
            if missing is None:
                raise
            for name in re.findall(r"'(\w+)'", missing.group(1)):
                kwargs[name] = BY_NAME.get(name, "x")
    return fn(**kwargs)


def _drive(result: Any) -> None:
    """Start what the call returned: a stream manager sends on enter, a generator on its first item."""
    if inspect.iscoroutine(result):
        asyncio.run(result)
    elif hasattr(result, "__enter__") and hasattr(result, "__exit__"):
        with result:
            pass
    elif inspect.isgenerator(result) or isinstance(result, Iterator):
        next(iter(result), None)


def route_of(call: Callable[[], Any], sent: list[httpx.Request], strip: str = "") -> Route | None:
    """The first request `call` sends; `local` when it returns without sending; None when it fails first."""
    sent.clear()
    failed = False
    try:
        _drive(call())
    except Exception:  # the 400 answer, or placeholders the method refuses: judged by what was sent
        failed = True
    if not sent:
        return None if failed else Route("local", "")
    request = sent[0]
    path = request.url.path
    return Route(request.method, path[len(strip):] if strip and path.startswith(strip) else path)


def _transport(sent: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(400, json={"type": "error", "error": {"code": 400, "message": "recorded",
                                                                     "status": "INVALID_ARGUMENT",
                                                                     "type": "invalid_request_error"}})
    return httpx.MockTransport(handle)


def clients(sent: list[httpx.Request]) -> dict[str, tuple[Any, str, str]]:
    """sdk -> (client, resource package, prefix of the request path to strip); all on the recording transport."""
    http = httpx.Client(transport=_transport(sent))
    return {
        "openai": (openai.OpenAI(api_key="k", admin_api_key="k", webhook_secret=WEBHOOK_SECRET,
                                 base_url="http://sdk.invalid/v1", http_client=http, max_retries=0),
                   "openai.resources", ""),
        "azure": (openai.AzureOpenAI(api_key="k", api_version=AZURE_API_VERSION, azure_endpoint="http://sdk.invalid",
                                     webhook_secret=WEBHOOK_SECRET, http_client=http, max_retries=0),
                  "openai.resources", ""),
        "anthropic": (anthropic.Anthropic(api_key="k", base_url="http://sdk.invalid", http_client=http,
                                          max_retries=0), "anthropic.resources", ""),
        "genai": (genai.Client(api_key="k", http_options=gtypes.HttpOptions(
            base_url="http://sdk.invalid", httpx_client=http)), "google.genai", ""),
    }


def ws_route(sdk: str, name: str, client: Any, fn: Callable[..., Any]) -> Route:
    """The path a `connect` method dials, relative to the base URL (its query left out)."""
    if sdk == "genai":
        return Route("ws", GENAI_WS[name].format(v=client._api_client._http_options.api_version))
    manager = call_with_placeholders(fn)
    prepare = next(getattr(manager, a) for a in dir(manager) if a.endswith("_prepare_url"))
    return Route("ws", str(prepare().path))


def sdk_methods() -> list[SdkMethod]:
    """Every method of the four clients (openai, AzureOpenAI, anthropic, google-genai), with its first request."""
    sent: list[httpx.Request] = []
    out: list[SdkMethod] = []
    for sdk, (client, package, strip) in clients(sent).items():
        found = list(resources(client, package))
        if sdk == "genai":
            names = {name for name, _, _ in found}
            found += [("aio." + n, r, m) for n, r, m in resources(client.aio, package) if n not in names]
        for name, resource, method in found:
            fn = getattr(resource, method)
            if method in WS_METHODS:
                out.append(SdkMethod(sdk, name, ws_route(sdk, name, client, fn)))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                route = route_of(functools.partial(call_with_placeholders, fn), sent, strip)
            out.append(SdkMethod(sdk, name, route))
    return out


__all__ = ["Route", "SdkMethod", "sdk_methods"]
