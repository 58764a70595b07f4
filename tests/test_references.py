"""Every repository path a docstring, comment or document cites exists: a newcomer who follows one lands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = "api|cli|operator|sidecar|testing|tests|docs|charts|scripts|benchmarks|examples|deploy|crds"
CITED = re.compile(rf"(?<![\w/.-])((?:{TOP})/[\w./-]*\w\.(?:md|py|yaml|json|sh|txt|tpl))\b")


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.sh", "*.yaml", "*.tpl", "*.txt", "Makefile"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if not line.startswith(("docs/wire-", "crds/"))]


def test_every_cited_path_exists() -> None:
    missing = sorted({f"{f.relative_to(ROOT)} cites {m}" for f in tracked() if f.is_file()
                      for m in CITED.findall(f.read_text(encoding="utf-8", errors="replace"))
                      if "*" not in m and "<" not in m and not (ROOT / m).exists()})
    assert not missing, "\n".join(missing)


def test_the_check_finds_a_missing_path() -> None:
    missing = "docs/" + "nowhere.md"  # split, so this file does not cite it
    assert CITED.findall(f"see {missing} and tests/reconciler/test_leases.py.") == [
        missing, "tests/reconciler/test_leases.py"]
