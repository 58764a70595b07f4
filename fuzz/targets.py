"""Fuzz targets: every sidecar parser that reads bytes from outside, one function per target.

Each target takes the fuzzer's bytes and raises only when an invariant breaks; libFuzzer (atheris) turns
that into a crash with a reproducer. The invariants are the ones the sidecar promises the app and the
operator: a malformed request is refused with `BadRequest` (a 400 in the provider's shape), never another
exception (which the proxy answers as a 500); a stream reads the same whatever its chunk boundaries (the
network decides them, not the provider); usage is normalized into non-negative integers or nothing; a bad
policy is a validation error; the admin port answers a client error, never a 5xx. Hangs and memory are
bounded by libFuzzer's `-timeout` and `-rss_limit_mb` (run.py sets both).

Why targets are plain functions here and atheris only in run.py: the pytest short pass and a developer
reproducing a crash (`python fuzz/run.py --reproduce FILE TARGET`) call the same code.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pydantic
import yaml
from multidict import MultiDict

from tokenbudget_api.policy import SidecarPolicy
from tokenbudget_api.tokenbudget import Dialect as DialectName
from tokenbudget_api.usage import Usage
from tokenbudget_sidecar import tokens, ws_meters
from tokenbudget_sidecar.dialects import DIALECTS, PASSTHROUGH, BadRequest, Call, Dialect
from tokenbudget_sidecar.dialects import anthropic as anthropic_dialect
from tokenbudget_sidecar.dialects import gemini as gemini_dialect
from tokenbudget_sidecar.dialects import openai as openai_dialect
from tokenbudget_sidecar.jsonarray import JSONArrayParser
from tokenbudget_sidecar.sse import Event, SSEParser
from tokenbudget_sidecar.thinking import Thinking

Target = Callable[[bytes], None]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# Paths each dialect meters, so a request body reaches its parser; the fuzzer picks one by the first byte.
PATHS: dict[DialectName, tuple[str, ...]] = {
    DialectName.OPENAI: ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"),
    DialectName.ANTHROPIC: ("/v1/messages",),
    DialectName.GEMINI: ("/v1beta/models/gemini-2.5-flash:generateContent",
                         "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
                         "/v1/models/text-embedding-004:embedContent"),
    DialectName.AZURE_OPENAI: ("/openai/deployments/gpt-4o/chat/completions", "/openai/v1/chat/completions",
                               "/openai/responses", "/openai/deployments/emb/embeddings"),
}
COUNT_CAP = 64 * 1024  # prompts past this are counted by the byte bound, as the proxy does past its hard cap


def _body(data: bytes) -> dict[str, Any] | None:
    """The body as the proxy decodes it (proxy.py): UTF-8, JSON, an object; None where the proxy answers 400."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def _thinking() -> Thinking:
    """A ThinkTier that selects every call (the example's, with a default tier), as the proxy applies it."""
    doc = yaml.safe_load((EXAMPLES / "thinktier.yaml").read_text(encoding="utf-8"))
    doc["spec"]["defaultTier"] = doc["spec"].get("defaultTier") or doc["spec"]["tiers"][1]["name"]
    policy = SidecarPolicy.model_validate({"thinkTiers": [{"name": "t", "spec": doc["spec"]}]})
    return Thinking(policy)


def request_target(name: DialectName) -> Target:
    """The request parser, the ThinkTier rewrite and the prompt counter of one dialect: only BadRequest may
    escape, and the rewritten body must still serialize."""
    dialect = DIALECTS[name]
    thinking = _thinking()

    def run(data: bytes) -> None:
        if not data:
            return
        path = PATHS[name][data[0] % len(PATHS[name])]
        body = _body(data[1:])
        if body is None:
            return
        operation = dialect.operation("POST", path)
        assert operation is not None and operation != PASSTHROUGH, path
        try:
            call = dialect.parse(operation, path, body, None)
        except BadRequest as exc:
            assert str(exc), "a BadRequest must say what is wrong"
            return
        assert isinstance(call.model, str) and call.model
        assert call.output_cap is None or 0 <= call.output_cap <= 2**31 - 1, call.output_cap
        prompt = dialect.prompt(body)
        texts = prompt.texts
        assert all(isinstance(t, str) for t in texts)
        assert isinstance(prompt.messages, int) and prompt.messages >= 0, prompt.messages
        assert prompt.media_tokens >= 0, prompt.media_tokens
        if sum(len(t) for t in texts) <= COUNT_CAP:
            counted = tokens.count_sync(call.model, texts)
            assert 0 <= counted <= tokens.byte_bound(texts), (counted, tokens.byte_bound(texts))
        thinking.apply(dialect, call, body, "/x" + path, {"x-tokenbudget-class": "deep"}, 100)
        dialect.prepare(call, body)
        dialect.set_output_cap(call, body, 100)
        json.dumps(body)  # what the proxy forwards after a rewrite must still serialize
        label = dialect.labelled_user(body, "user")
        assert label is None or isinstance(label, str)

    return run


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """The stream and its chunk boundaries: the first byte says how many cuts, the next bytes where."""
    if not data:
        return [], b""
    cuts_n = data[0] % 16
    cuts_raw, stream = data[1 : 1 + cuts_n], data[1 + cuts_n :]
    cuts = sorted({c % (len(stream) + 1) for c in cuts_raw}) if stream else []
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)], stream


def _events(parser: SSEParser | JSONArrayParser, chunks: list[bytes]) -> list[Event]:
    events = [ev for chunk in chunks for ev in parser.feed(chunk)]
    return events + parser.close()


def _reading(dialect: Dialect, call: Call, events: list[Event]) -> tuple[dict[str, Any], bytes]:
    tracker = dialect.tracker(call)
    kept = b"".join(ev.raw for ev in events if tracker.on_event(ev))
    reading = asdict(tracker.reading)
    usage = tracker.reading.usage
    assert usage is None or isinstance(usage, Usage)
    return reading, kept


def stream_target(name: DialectName, operation: str, json_array: bool = False) -> Target:
    """A stream tracker behind its splitter: the same events and the same reading whatever the chunking."""
    dialect = DIALECTS[name]

    def run(data: bytes) -> None:
        chunks, whole = _split(data)
        make = JSONArrayParser if json_array else SSEParser
        chunked, at_once = _events(make(), chunks), _events(make(), [whole])
        assert chunked == at_once, "the events depend on chunk boundaries"
        call = Call(operation, "m", stream=True, injected_usage=True)
        got, kept = _reading(dialect, call, chunked)
        want, kept_whole = _reading(dialect, Call(operation, "m", stream=True, injected_usage=True), at_once)
        assert got == want, f"the reading depends on chunk boundaries:\n{got}\n{want}"
        assert kept == kept_whole

    return run


def usage_target(data: bytes) -> None:
    """Each dialect's usage normalizer on any JSON: a Usage of integers (seconds for audio), or None."""
    try:
        raw = json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return
    results = [openai_dialect.usage_of(raw), gemini_dialect.usage_of(raw), anthropic_dialect.usage_of(raw)]
    results.append(anthropic_dialect.usage_of(raw, results[2] or Usage(input_tokens=5, output_tokens=1)))
    for usage in results:
        if usage is not None:
            for name, value in usage.model_dump().items():
                kinds = (int, float) if name.endswith("_seconds") else (int,)  # audio is billed by the second
                assert isinstance(value, kinds) and not isinstance(value, bool), usage


WS_PATHS = (("openai", "/v1/realtime"), ("openai", "/v1/responses"),
            ("gemini", "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"))


def ws_session_target(data: bytes) -> None:
    """A WebSocket session's meter (ws_meters.py) on any messages: the first byte picks the kind, then messages
    split at NUL bytes alternate app → provider, text or binary. Never raises; each report is a Usage of
    non-negative integers (seconds for audio) with a model string; no response id is billed twice; at most one
    report per provider message, plus one pending Gemini turn at the end."""
    if not data:
        return
    dialect, path = WS_PATHS[data[0] % len(WS_PATHS)]
    meter = ws_meters.meter_for(dialect, path, MultiDict(model="m"))
    assert meter is not None
    reports: list[ws_meters.Billed] = []
    messages = data[1:].split(b"\0")
    for i, message in enumerate(messages):
        payload: str | bytes = message if i % 4 >= 2 else message.decode("utf-8", "replace")
        if i % 2 == 0:
            meter.client(payload)
        else:
            reports += meter.upstream(payload)
    assert len(reports) <= len(messages) // 2 + 1
    reports += meter.end()
    assert len(reports) <= len(messages) // 2 + 2
    ids = [r.response_id for r in reports if r.response_id is not None]
    assert len(ids) == len(set(ids)), ids
    for report in reports:
        assert isinstance(report.model, str)
        for name, value in report.usage.model_dump().items():
            kinds = (int, float) if name.endswith("_seconds") else (int,)
            assert isinstance(value, kinds) and not isinstance(value, bool), report


def policy_target(data: bytes) -> None:
    """The policy loader (a standalone policy file, YAML or JSON): a policy, or a validation error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_bytes(data)
        try:
            policy = SidecarPolicy.load(path)
        except (pydantic.ValidationError, yaml.YAMLError, UnicodeDecodeError, RecursionError):
            return
    again = SidecarPolicy.model_validate(policy.model_dump(mode="json", by_alias=True))
    assert again.version == policy.version


class AdminTarget:
    """The admin app in-process on a real socket: any method, path, query and body gets a status below 500.

    A policy the loader accepts is applied for real (state.apply), which is where a valid but odd policy
    would break the sidecar. One app and one client session per fuzzing process; each input is one request.
    """

    METHODS = ("GET", "PUT", "POST", "DELETE")
    PATHS = ("/policy", "/usage", "/usage/ack", "/budgets", "/thinking", "/readyz", "/healthz", "/drain",
             "/metrics")

    TOKEN = "fuzz-token"

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def _start(self) -> None:
        from aiohttp import web

        from tokenbudget_sidecar.app import create_admin_app, create_state
        from tokenbudget_sidecar.settings import Settings

        self.tmp = tempfile.mkdtemp(prefix="tokenbudget-fuzz-admin-")
        token = Path(self.tmp) / "token"
        token.write_text(self.TOKEN)
        settings = Settings(admin_token_file=token, ledger_dir=Path(self.tmp) / "ledger", drain_timeout_s=0.01)
        self.loop = asyncio.new_event_loop()
        state = create_state(settings, SidecarPolicy())
        self.runner = web.AppRunner(create_admin_app(state), access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", 0).start())
        self.port = self.runner.addresses[0][1]

    def __call__(self, data: bytes) -> None:
        if self.loop is None:
            self._start()
        assert self.loop is not None
        if len(data) < 2:
            return
        method = self.METHODS[data[0] % len(self.METHODS)]
        path = self.PATHS[data[1] % len(self.PATHS)]
        query, _, body = data[2:].partition(b"\n")
        query = query.replace(b"\r", b"").replace(b" ", b"%20")
        target = path.encode() + (b"?" + query if query else b"")
        status, head = self.loop.run_until_complete(self._send(method.encode(), target, body))
        assert status < 500 or (path == "/readyz" and status == 503), f"{method} {target!r}: {head!r}"

    async def _send(self, method: bytes, target: bytes, body: bytes) -> tuple[int, bytes]:
        """Raw HTTP/1.1, so the fuzzed query reaches the server's own parser exactly as sent."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"%s %s HTTP/1.1\r\nhost: sidecar\r\nauthorization: Bearer %s\r\n"
                         b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                         % (method, target, self.TOKEN.encode(), len(body), body))
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
        head = answer.split(b"\r\n", 1)[0]
        assert head.startswith(b"HTTP/1."), answer[:300]
        return int(head.split()[1]), answer[:600]


def targets() -> dict[str, Target]:
    """Every target by name (the name is its corpus directory under fuzz/corpus/)."""
    out: dict[str, Target] = {}
    for name in DIALECTS:
        out[f"request_{name.value.lower()}"] = request_target(name)
    out["stream_openai_chat"] = stream_target(DialectName.OPENAI, "chat")
    out["stream_openai_responses"] = stream_target(DialectName.OPENAI, "responses")
    out["stream_anthropic"] = stream_target(DialectName.ANTHROPIC, "messages")
    out["stream_gemini_sse"] = stream_target(DialectName.GEMINI, "generate")
    out["stream_gemini_array"] = stream_target(DialectName.GEMINI, "generate", json_array=True)
    out["usage"] = usage_target
    out["ws_session"] = ws_session_target
    out["policy"] = policy_target
    out["admin"] = AdminTarget()
    return out
