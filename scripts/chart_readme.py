#!/usr/bin/env python3
"""Write charts/tokenbudget/README.md from the chart's values.yaml: every value, its default, its comment.

Why a script and not helm-docs: helm-docs is a Go module (buildable from the proxy the way scripts/helm.sh
builds helm, at another minute or two of the two shared cores and ~100 MB of cache) and wants its own `# --`
comment dialect; values.yaml's plain comments already say what each value does, and this is ~150 lines of the
Python the project already runs. tests/chart/test_chart_readme.py fails when the README drifts from it.

A comment documents the key right below it (no blank line between) or the key on its line. A block mapping
with comments on keys inside it is listed key by key; one without (affinity) is a single value with its default.
Every listed value must be documented: an undocumented one is an error, not an empty cell.

    scripts/chart_readme.py            # rewrite the README
    scripts/chart_readme.py --check    # exit 1 if it differs (what the test does)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "tokenbudget"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][A-Za-z0-9_]*):(?P<rest>.*)$")


@dataclass
class Node:
    path: tuple[str, ...]
    indent: int
    doc: list[str] = field(default_factory=list)
    block: bool = False  # the value is on the following lines (a mapping or a list)
    children: list[Node] = field(default_factory=list)


def _split_comment(rest: str) -> tuple[str, str]:
    """(value, inline comment) of what follows `key:`; a `#` inside quotes is part of the value."""
    quote = ""
    for i, ch in enumerate(rest):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i + 1 :].strip()
    return rest.strip(), ""


def parse(text: str) -> tuple[list[str], list[Node]]:
    """(the file's opening comment, the tree of keys with their comments)."""
    lines = text.splitlines()
    intro: list[str] = []
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        intro.append(lines[i].lstrip("#").strip())
        i += 1
    roots: list[Node] = []
    stack: list[Node] = []
    pending: list[str] = []
    for line in lines[i:]:
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = KEY_LINE.match(line)
        if not match:  # a list item or a continuation inside a block value
            pending = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1].indent >= indent:
            stack.pop()
        if stack and not stack[-1].block:
            pending = []
            continue
        value, comment = _split_comment(match["rest"])
        parent_path = stack[-1].path if stack else ()
        node = Node((*parent_path, match["key"]), indent, [*pending, *([comment] if comment else [])], not value)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
        pending = []
    return intro, roots


def _lookup(values: dict[str, Any], path: tuple[str, ...]) -> Any:
    found: Any = values
    for key in path:
        found = found[key]
    return found


def _join(lines: list[str]) -> str:
    """Comment lines as one cell: a line starting with "- " starts a new line, as it did in the file."""
    return " ".join(f"<br>{line}" if line.startswith("- ") else line for line in lines)


def _documented_below(node: Node) -> bool:
    return any(child.doc or _documented_below(child) for child in node.children)


def rows(nodes: list[Node], values: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, default, description) per documented mapping and per value; raises on an undocumented value."""
    out: list[tuple[str, str, str]] = []
    for node in nodes:
        described = _documented_below(node)
        key = ".".join(node.path)
        doc = _join(node.doc)
        if node.children and described:
            if doc:
                out.append((key, "", doc))
            out += rows(node.children, values)
            continue
        if not doc:
            raise ValueError(f"values.yaml: {key} has no comment (above it, or after it on its line)")
        default = json.dumps(_lookup(values, node.path), separators=(", ", ": "), ensure_ascii=False)
        out.append((key, default, doc))
    return out


def render(values_text: str) -> str:
    intro, tree = parse(values_text)
    values = yaml.safe_load(values_text)
    table = ["| Key | Default | Description |", "|---|---|---|"]
    for key, default, doc in rows(tree, values):
        cell = f"`{default}`" if default else ""
        table.append(f"| `{key}` | {cell.replace('|', chr(92) + '|')} | {doc.replace('|', chr(92) + '|')} |")
    return "\n".join([
        "# tokenbudget Helm chart",
        "",
        "<!-- Generated by scripts/chart_readme.py from values.yaml: edit the comments there, then run it. -->",
        "",
        " ".join(line for line in intro if line) or "",
        "",
        "```sh",
        "helm install tokenbudget charts/tokenbudget -n tokenbudget-system --create-namespace \\",
        "  --set image.repository=<registry>/tokenbudget-operator \\",
        "  --set sidecar.image=<registry>/tokenbudget-sidecar:<tag>",
        "helm test tokenbudget -n tokenbudget-system   # the webhook answers over TLS through its Service",
        "```",
        "",
        "GitOps (Argo CD, Flux): `examples/gitops/`. `values.schema.json` refuses unknown keys and bad values.",
        "",
        "## Values",
        "",
        *table,
        "",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the README differs from values.yaml")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args()
    readme = args.chart / "README.md"
    text = render((args.chart / "values.yaml").read_text(encoding="utf-8"))
    if args.check:
        if not readme.is_file() or readme.read_text(encoding="utf-8") != text:
            print(f"{readme} is out of date: run scripts/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
