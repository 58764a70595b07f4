"""Pin what the images install: images/requirements-{sidecar,operator,testapp}.txt.

Resolves each image's requirement with pip (``--dry-run --report``: nothing is installed) for CPython 3.11
on Linux (what Debian bookworm ships) and writes ``name==version`` for every dependency. scripts/images.sh
and images/Containerfile install with these as constraints, so a rebuild picks the same wheels.

    .venv/bin/python scripts/images_lock.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"


def requirements() -> dict[str, list[str]]:
    """Per image, what pip is asked for (local paths for this repository's own distributions)."""
    # The testing distribution requires tokenbudget[sidecar]: name the checkout too, so pip never looks for
    # a `tokenbudget` on the index.
    return {
        "sidecar": [f"{REPO}[sidecar]"],
        "operator": [f"{REPO}[operator]"],
        "testapp": [f"{REPO}[sidecar]", str(REPO / "testing")],
    }


def resolve(reqs: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
             "--only-binary=:all:", "--report", str(report), *reqs],
            check=True,
        )  # fmt: skip
        installs = json.loads(report.read_text())["install"]
    pins = []
    for item in installs:
        meta = item["metadata"]
        if item.get("download_info", {}).get("url", "").startswith("file:"):
            continue  # this repository's own distributions: built from the checkout
        pins.append(f"{meta['name'].lower().replace('_', '-')}=={meta['version']}")
    return sorted(pins)


def main() -> None:
    for image, reqs in requirements().items():
        pins = resolve(reqs)
        header = f"# Pinned by scripts/images_lock.py for the {image} image; regenerate, never edit by hand.\n"
        (IMAGES / f"requirements-{image}.txt").write_text(header + "\n".join(pins) + "\n")
        print(f"{image}: {len(pins)} pins")


if __name__ == "__main__":
    main()
