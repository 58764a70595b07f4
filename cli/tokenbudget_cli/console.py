"""One place that decides how output looks: colour only on a terminal, and wide tables when piped.

rich detects a TTY and honours NO_COLOR itself; when stdout is not a terminal it would wrap tables at 80
columns, which breaks `grep` and diffs, so piped output gets a wide fixed width and no colour codes.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rich import box
from rich.console import Console
from rich.table import Table

from tokenbudget_api.tokenbudget import Stage

PIPED_WIDTH = 200

STAGE_STYLE = {Stage.NORMAL: "green", Stage.ALERT: "yellow", Stage.THROTTLE: "dark_orange",
               Stage.DOWNGRADE: "magenta", Stage.BLOCK: "bold red"}


def console(file: TextIO | None = None) -> Console:
    out = file or sys.stdout
    if out.isatty():
        return Console(file=out)
    return Console(file=out, width=PIPED_WIDTH, no_color=True, color_system=None, highlight=False,
                   soft_wrap=False)


def stage_text(stage: Stage | None) -> str:
    """Console markup for a stage: its colour on a terminal (markup is dropped when piped)."""
    if stage is None:
        return "-"
    return f"[{STAGE_STYLE[stage]}]{stage.value}[/]"


def percent_style(percent: int) -> str:
    return "bold red" if percent >= 95 else "dark_orange" if percent >= 80 else "yellow" if percent >= 50 else "green"


NUMERIC = {"USED", "LIMIT", "REMAINING", "%", "TOKENS", "USD", "CALLS", "BUDGET", "SAMPLES", "P50", "P95", "P99",
           "TRUNCATED%", "UNDERUSE%", "RECOMMENDED", "COSTUSD", "REQUESTS", "THINKING", "AFTER", "CUT%"}


def table(*columns: str, title: str | None = None, caption: str | None = None, left: int = 0) -> Table:
    """A plain table (a rule under the header only): numbers right-aligned, by column name, except the
    first `left` columns (labels, such as a report's BUDGET names)."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title=title, title_justify="left",
              caption=caption, caption_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="right" if col.upper() in NUMERIC and i >= left else "left")
    return t
