"""Write the seed corpus (fuzz/corpus/<target>/) from realistic requests, streams, usage, policies.

Seeds give the fuzzer valid shapes to mutate from: without them it spends its time on bytes that are not
JSON at all. Run it again after adding a target; the files are small and kept in git.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"


def _msg(**extra: object) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}], **extra}


REQUESTS: dict[str, list[tuple[int, object]]] = {
    "openai": [
        (0, _msg(max_tokens=50, user="u1")),
        (0, _msg(stream=True, stream_options={"include_usage": False}, max_completion_tokens=20.0)),
        (1, {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"], "suffix": "c"}),
        (2, {"model": "o3", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
             "instructions": "be brief", "max_output_tokens": 200, "reasoning": {"effort": "low"}}),
        (3, {"model": "text-embedding-3-small", "input": ["x", "y"]}),
    ],
    "anthropic": [
        (0, {"model": "claude-sonnet-4-5", "max_tokens": 100, "system": "s",
             "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
             "metadata": {"user_id": "u"}, "thinking": {"type": "enabled", "budget_tokens": 2048}}),
        (0, {"model": "claude-haiku-4-5", "max_tokens": 0, "stream": True, "messages": []}),
        (0, {"model": "claude-opus-4-7", "max_tokens": 4000, "output_config": {"effort": "low"},
             "thinking": {"type": "adaptive"}, "tools": [{"name": "t", "input_schema": {}}],
             "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}]}),
    ],
    "gemini": [
        (0, {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
             "generationConfig": {"maxOutputTokens": 64, "thinkingConfig": {"thinkingBudget": 128}},
             "labels": {"user": "u"}}),
        (1, {"contents": [{"parts": [{"text": "x"}]}], "generation_config": {"max_output_tokens": 8},
             "systemInstruction": {"parts": [{"text": "s"}]}}),
        (2, {"content": {"parts": [{"text": "embed me"}]}}),
    ],
    "azureopenai": [
        (0, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
        (1, _msg(max_completion_tokens=7)),
        (2, {"model": "gpt-4o", "input": "hi"}),
        (3, {"input": "x"}),
    ],
}


def _sse(*events: tuple[str, object]) -> bytes:
    out = b""
    for name, data in events:
        if name:
            out += f"event: {name}\n".encode()
        out += b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"
    return out


STREAMS: dict[str, list[bytes]] = {
    "stream_openai_chat": [
        _sse(("", {"id": "c1", "choices": [{"delta": {"content": "Hel"}}]}),
             ("", {"id": "c1", "choices": [{"delta": {"content": "lo", "reasoning_content": "r"},
                                            "finish_reason": "length"}]}),
             ("", {"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                                                         "completion_tokens_details": {"reasoning_tokens": 1}}}),
             ("", b"[DONE]")).replace(b"\n", b"\r\n"),
        _sse(("", {"error": {"message": "overloaded"}})),
    ],
    "stream_openai_responses": [
        _sse(("response.created", {"type": "response.created", "response": {"id": "resp_1"}}),
             ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
             ("response.reasoning_summary_text.delta", {"type": "response.reasoning_summary_text.delta",
                                                        "delta": "think"}),
             ("response.completed", {"type": "response.completed", "response": {
                 "id": "resp_1", "usage": {"input_tokens": 5, "output_tokens": 3,
                                           "input_tokens_details": {"cached_tokens": 1}}}})),
    ],
    "stream_anthropic": [
        _sse(("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {
                 "input_tokens": 10, "cache_read_input_tokens": 2, "output_tokens": 1}}}),
             ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "thinking_delta",
                                                                               "thinking": "hm"}}),
             ("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "ok"}}),
             ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                                "usage": {"output_tokens": 7}}),
             ("message_stop", {"type": "message_stop"})).replace(b"\n", b"\r"),
        b": ping\n\n" + _sse(("error", {"type": "error", "error": {"type": "overloaded_error"}})),
    ],
    "stream_gemini_sse": [
        _sse(("", {"responseId": "r1", "candidates": [{"content": {"parts": [{"text": "a", "thought": True}]}}],
                   "usageMetadata": {"promptTokenCount": 4}}),
             ("", {"candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS"}],
                   "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 3}})),
    ],
    "stream_gemini_array": [
        b'[{"candidates": [{"content": {"parts": [{"text": "\xc3\xa9t\xc3\xa9"}]}}]}\r\n,'
        b'{"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, '
        b'"candidatesTokenCount": 2}}\r\n]',
    ],
}

USAGE = [
    {"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2},
     "completion_tokens_details": {"reasoning_tokens": 1}},
    {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 1, "cache_creation_input_tokens": 2,
     "output_tokens_details": {"thinking_tokens": 2}},
    {"promptTokenCount": 1, "candidatesTokenCount": 2, "thoughtsTokenCount": 3, "cachedContentTokenCount": 0,
     "toolUsePromptTokenCount": 4},
]


def _policies() -> list[bytes]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("tokenbudget-*.yaml"))]
    out = []
    for doc in docs:
        policy = {"upstreams": [{"name": "openai", "baseURL": "http://127.0.0.1:9/v1", "dialect": "OpenAI"}],
                  "budgets": [{"namespace": "default", "name": doc["metadata"]["name"], "spec": doc["spec"]}]}
        out.append(yaml.safe_dump(policy).encode())
    out.append(json.dumps({"version": "v1", "onDisconnect": "Cut", "failMode": "Open"}).encode())
    return out


def _admin() -> list[bytes]:
    policies = _policies()
    as_json = [json.dumps(yaml.safe_load(p)).encode() for p in policies]
    return [bytes([1, 0]) + b"\n" + as_json[0], bytes([0, 1]) + b"after=0&limit=10\n",
            bytes([2, 2]) + b"\n" + b'{"cursor": 0}', bytes([0, 3]) + b"keys=fullest&alertsAfter=3\n",
            bytes([0, 4]) + b"\n", bytes([0, 7]) + b"\n"]


def write(target: str, items: list[bytes]) -> None:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for item in items:
        (folder / hashlib.sha1(item).hexdigest()).write_bytes(item)


# (kind: 0 Realtime, 1 Responses, 2 Gemini Live; messages alternating app, provider)
WS_SESSIONS: list[tuple[int, list[object]]] = [
    (0, [{"type": "session.update", "session": {"type": "realtime", "model": "gpt-realtime",
                                                 "audio": {"input": {"transcription": {"model": "whisper-1"}}}}},
         {"type": "session.updated", "session": {"model": "gpt-realtime"}},
         {"type": "response.create"},
         {"type": "response.done", "response": {"id": "resp_1", "usage": {
             "input_tokens": 20, "output_tokens": 9, "input_token_details": {
                 "cached_tokens": 4, "audio_tokens": 8, "cached_tokens_details": {"audio_tokens": 2}},
             "output_token_details": {"text_tokens": 3, "audio_tokens": 6}}}},
         {"type": "input_audio_buffer.commit"},
         {"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1",
          "usage": {"type": "duration", "seconds": 1.5}}]),
    (1, [{"type": "response.create", "model": "gpt-4o-mini", "input": "hi"},
         {"type": "response.completed", "response": {"id": "resp_2", "model": "gpt-4o-mini", "usage": {
             "input_tokens": 5, "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 1}}}}]),
    (2, [{"setup": {"model": "models/gemini-live-2.5-flash-preview"}},
         {"setupComplete": {}},
         {"client_content": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turn_complete": True}},
         {"usageMetadata": {"promptTokenCount": 4, "responseTokenCount": 2}},
         {"realtime_input": {"text": "more"}},
         {"serverContent": {"turnComplete": True}, "usageMetadata": {
             "promptTokenCount": 9, "responseTokenCount": 5, "thoughtsTokenCount": 2,
             "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 3}],
             "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 5}]}}]),
]


def main() -> None:
    for dialect, requests in REQUESTS.items():
        write(f"request_{dialect}", [bytes([i]) + json.dumps(body).encode() for i, body in requests])
    for target, streams in STREAMS.items():
        # no cuts, and cuts inside CRLF pairs, multibyte characters and field names
        write(target, [b"\x00" + s for s in streams] + [bytes([3, 7, 30, 61]) + s for s in streams])
    write("usage", [json.dumps(u).encode() for u in USAGE])
    write("ws_session", [bytes([kind]) + b"\0".join(json.dumps(m).encode() for m in messages)
                         for kind, messages in WS_SESSIONS])
    write("policy", _policies())
    write("admin", _admin())


if __name__ == "__main__":
    main()
