"""tiktoken must work with no network: pods and CI cannot reach its download host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import tiktoken
print(tiktoken.get_encoding("o200k_base").encode("Hello, world!"))
print(tiktoken.get_encoding("cl100k_base").encode("hello world"))
"""


def _offline_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(cache))
    # Any download attempt goes to a closed loopback port and fails at once.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


@pytest.fixture
def cache_dir() -> Path:
    value = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not value:
        pytest.fail("TIKTOKEN_CACHE_DIR is not set: run the suite through `make test`")
    return Path(value)


def test_both_encodings_load_offline_from_the_cache(cache_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=_offline_env(cache_dir),
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == ["[13225, 11, 2375, 0]", "[15339, 1917]"]


def test_tiktoken_refuses_a_corrupted_cache_file(cache_dir: Path, tmp_path: Path) -> None:
    """Our cache must go through tiktoken's own sha256 check, not around it."""
    shutil.copytree(cache_dir, tmp_path / "cache")
    for f in (tmp_path / "cache").iterdir():
        data = bytearray(f.read_bytes())
        data[100] ^= 0x01
        f.write_bytes(bytes(data))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=_offline_env(tmp_path / "cache"),
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode != 0
    assert "127.0.0.1" in out.stderr or "hash" in out.stderr.lower() or "Connection" in out.stderr
