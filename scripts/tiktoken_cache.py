"""Fill TIKTOKEN_CACHE_DIR with the o200k_base and cl100k_base encodings, offline from then on.

tiktoken downloads its BPE files from a blob store at first use; pods and CI here cannot reach it.
The `litellm` wheel on PyPI ships both files already named by tiktoken's cache key (sha1 of the
source URL), so we take them from that wheel (without installing litellm) and check them against the
sha256 digests tiktoken itself expects. tiktoken re-checks the digest on every load.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SOURCE_PACKAGE = "litellm==1.109.1"
INNER_DIR = "litellm/litellm_core_utils/tokenizers/"
# cache key (sha1 of the URL tiktoken loads) -> (encoding, sha256 tiktoken expects)
FILES = {
    "fb374d419588a4632f3f557e76b4b70aebbca790": (
        "o200k_base",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "9b5ad71b2ce5302211f9c61530b329a4922fc6a4": (
        "cl100k_base",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}


def _ok(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def fill(cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = {k: v for k, v in FILES.items() if not _ok(cache_dir / k, v[1])}
    if not missing:
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, SOURCE_PACKAGE],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for key, (name, sha256) in missing.items():
                data = zf.read(INNER_DIR + key)
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise SystemExit(f"{name}: sha256 mismatch in {wheel.name}; refusing to cache it")
                (cache_dir / key).write_bytes(data)
                print(f"tiktoken: cached {name} in {cache_dir}", file=sys.stderr)


if __name__ == "__main__":
    fill(Path(sys.argv[1]))
