"""The served ledger: what the test upstream did for every call, in normalized units.

A proxy under test is judged by comparing what *it* metered with what the provider actually reported;
this ledger is the provider's side of that comparison. Usage is normalized across dialects so a test
can assert one formula for all three providers:

- ``input_tokens``: every prompt token, including cache reads and cache writes (Anthropic's wire
  ``input_tokens`` excludes both; OpenAI's and Gemini's prompt counts include reads);
- ``cached_input_tokens`` / ``cache_creation_input_tokens``: the parts of ``input_tokens`` read from /
  written to the prompt cache;
- ``output_tokens``: every generated token including reasoning/thinking (Gemini's wire
  ``candidatesTokenCount`` excludes thoughts); ``reasoning_tokens`` is the part of it spent thinking.

The usage fields always hold what the provider reported or *would have* reported for the call as
planned; ``usage_sent`` says whether the client actually received it and ``emitted_output_tokens`` how
many output tokens were generated before the response ended (less than ``output_tokens`` when a stream
was cut). A record is added when a call arrives and updated in place as the response is written, so a
client that has read the end of a response always finds its record complete (``finished`` turns true
once the handler has returned; wait for it with :meth:`Ledger.wait_finished`).

The ledger is shared between the server's event loop and test code that may run in another thread, so
every access goes through one lock and readers get copies.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

Dialect = Literal["openai-chat", "openai-completions", "openai-responses", "openai-embeddings", "openai-images",
                  "openai-transcriptions", "openai-speech", "anthropic", "gemini", "openai-realtime",
                  "openai-responses-ws", "gemini-live"]


class ServedRecord(BaseModel):
    """One call as the test upstream served it."""

    seq: int = Field(description="Arrival order, 1-based, never reset by clear().")
    request_id: str = Field(
        description="Also the response id (chatcmpl-…, resp_…, msg_…, Gemini responseId) and the "
        "x-upstream-request-id response header."
    )
    dialect: Dialect
    endpoint: str = Field(description="Request path, e.g. /v1/chat/completions.")
    model: str = Field(description="Body model (Gemini: from the path); empty when missing.")
    stream: bool
    status: int = Field(0, description="HTTP status sent; 0 when the connection was reset before headers.")
    failure: str | None = Field(None, description="The x-upstream-fail value applied, or the error kind.")
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    input_image_tokens: int = Field(0, description="Part of input_tokens: uploaded images (image edits).")
    input_audio_tokens: int = Field(0, description="Part of input_tokens: audio (gpt-4o-*transcribe).")
    output_audio_tokens: int = Field(0, description="Part of output_tokens: generated audio (Realtime, Live).")
    audio_seconds: float = Field(0.0, description="Seconds of audio billed (whisper-1), which reports no tokens.")
    emitted_output_tokens: int = Field(0, description="Output tokens generated before the response ended.")
    truncated: bool = Field(False, description="The output cap cut thinking or answer.")
    finish_reason: str | None = Field(None, description="Dialect-native stop signal that was planned.")
    usage_sent: bool = Field(False, description="The client received the final usage.")
    completed: bool = Field(False, description="The whole response was written (no reset, no client gone).")
    finished: bool = Field(False, description="The handler has returned; the record will not change.")
    request_headers: dict[str, str] = Field(default_factory=dict, description="Lower-cased names.")
    request_query: dict[str, str] = Field(default_factory=dict)
    request_body: Any = Field(None, description="The parsed JSON body as received (None if not JSON).")
    received_at: float = Field(default_factory=time.time, description="Unix seconds.")
    first_byte_at: float | None = Field(None, description="Unix seconds when the first body byte was written.")
    finished_at: float | None = None

    @property
    def total_tokens(self) -> int:
        """Input plus output, the way every provider that reports a total computes it."""
        return self.input_tokens + self.output_tokens


class Ledger:
    """Thread-safe, append-only (until cleared) list of :class:`ServedRecord`."""

    def __init__(self) -> None:
        self._records: list[ServedRecord] = []
        self._seq = 0
        self._cond = threading.Condition()

    def start(self, **fields: Any) -> ServedRecord:
        """Add the record of a call that just arrived and return the live object to update."""
        with self._cond:
            self._seq += 1
            record = ServedRecord(seq=self._seq, **fields)
            self._records.append(record)
            self._cond.notify_all()
            return record

    def update(self, record: ServedRecord, **changes: Any) -> None:
        """Change fields of a live record under the lock, so readers never see half an update."""
        with self._cond:
            for name, value in changes.items():
                setattr(record, name, value)
            self._cond.notify_all()

    @property
    def records(self) -> list[ServedRecord]:
        """A snapshot (copies) of every record since the last clear(), oldest first."""
        with self._cond:
            return [r.model_copy(deep=True) for r in self._records]

    def clear(self) -> None:
        """Forget all records (calls still in flight keep updating their detached records)."""
        with self._cond:
            self._records.clear()
            self._cond.notify_all()

    def by_id(self, request_id: str) -> ServedRecord:
        """The record with this request id; KeyError if there is none."""
        with self._cond:
            for record in self._records:
                if record.request_id == request_id:
                    return record.model_copy(deep=True)
        raise KeyError(request_id)

    def _finished_count_ok(self, count: int) -> bool:
        done = [r for r in self._records if r.finished]
        return len(done) >= count and len(done) == len(self._records)

    def wait_finished(self, count: int = 1, timeout: float = 5.0) -> list[ServedRecord]:
        """Block until at least ``count`` records exist and all of them are finished.

        Needed after a client walks away mid-stream: the server only notices at its next write, so
        the record becomes final a little after the client has given up.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._finished_count_ok(count), timeout):
                raise TimeoutError(f"fewer than {count} finished calls after {timeout}s: {self._records}")
            return [r.model_copy(deep=True) for r in self._records]

    async def wait_finished_async(self, count: int = 1, within: float = 5.0) -> list[ServedRecord]:
        """Like :meth:`wait_finished` without blocking the event loop (polls every 10 ms; ``within`` s)."""
        deadline = time.monotonic() + within
        while True:
            with self._cond:
                if self._finished_count_ok(count):
                    return [r.model_copy(deep=True) for r in self._records]
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fewer than {count} finished calls after {within}s")
            await asyncio.sleep(0.01)

    def find(self, predicate: Callable[[ServedRecord], bool]) -> list[ServedRecord]:
        """Copies of the records matching ``predicate``."""
        with self._cond:
            return [r.model_copy(deep=True) for r in self._records if predicate(r)]
