"""Process settings, from TOKENBUDGET_* environment variables (the webhook sets them in pods)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenbudget_api import names
from tokenbudget_api.tokenbudget import FailMode


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOKENBUDGET_")

    data_host: str = "127.0.0.1"  # loopback: only the pod's own containers reach the data port
    data_port: int = names.SIDECAR_DATA_PORT
    # TLS on the data port (PEM files; both or neither). Needed by google-genai's live.connect, which always dials
    # wss:// whatever the base URL's scheme (websocket.py): the app must then trust the certificate.
    data_tls_cert_file: Path | None = None
    data_tls_key_file: Path | None = None
    admin_host: str = "127.0.0.1"  # loopback unless told: the webhook sets the pod IP, where the operator calls
    admin_port: int = names.SIDECAR_ADMIN_PORT
    admin_token_file: Path | None = None  # bearer token for the admin API; None: admin API is open
    policy_file: Path | None = None  # standalone mode; None: the embedded default
    ledger_dir: Path | None = None  # write-ahead log of usage records (an emptyDir in pods)

    max_body_bytes: int = 16 * 1024 * 1024  # larger requests get 413 before any JSON decoding
    count_thread_threshold_bytes: int = 32 * 1024  # above this, tiktoken runs in a worker thread
    count_hard_cap_bytes: int = 4 * 1024 * 1024  # above this, a byte-count upper bound instead of tiktoken
    tiktoken_download: bool = False  # let tiktoken fetch a missing encoding (its download has no timeout)
    tokenizer_retry_s: float = 30.0  # how often a missing encoding is looked for again (its file may appear)
    # Lazy: count a prompt with tiktoken only when a decision depends on it (prompt_count.py), loading each
    # encoding on first need; Exact: load o200k_base at start and count every prompt (records then always
    # carry tiktoken's figure, at ~74 MiB more per pod).
    prompt_count: Literal["Lazy", "Exact"] = "Lazy"
    prompt_margin_percent: int = 10  # added to tiktoken's count when reserving: other vendors tokenize differently

    pool_size: int = 1024  # upstream connections; aiohttp's default of 100 silently caps concurrency
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0  # longest silence between upstream bytes (reasoning calls think long)
    # No total deadline: a long reasoning stream that keeps sending must never be cut by a timer.

    default_output_tokens: int = 4096  # reserved for a call that sets no output cap and has no budget cap
    max_throttle_delay_s: float = 30.0  # a Throttle delay longer than this is answered 429 instead
    reservation_ttl_s: float = 3600.0  # a hold not settled by then is released (calls settle in finally)
    # A call refused only because this pod's grant is spent while the budget has room waits this long at most
    # for the operator's next push (a lease round, 2 s by default) instead of answering 429 at once.
    grant_wait_s: float = 5.0
    # Injected pods (the webhook sets it): unready, so a native sidecar holds the app, until the operator's first
    # push or this many seconds; 0 (standalone): ready at once on the policy file or the embedded default.
    await_policy_s: float = 0.0
    # After that wait with no push: Open serves calls, metered and counted once the policy arrives; Closed
    # answers them 503 in the provider's shape until it does.
    pending_fail_mode: FailMode = FailMode.OPEN

    # Background Responses (background.py): a create answered `queued` is settled by the first retrieve that shows
    # it ended. One this sidecar never sees end (polled through another pod, or followed by webhook) is recorded,
    # estimated, this long after its create; and at most this many wait at once (past that, the oldest is).
    deferral_ttl_s: float = Field(default=3600.0, gt=0)
    max_deferrals: int = Field(default=10_000, ge=1)

    drain_timeout_s: float = 20.0  # preStop waits this long at most for the operator's last pull (drain.py)

    log_level: names.LogLevel = "INFO"
