"""Colour for people on a terminal, plain text for pipes and NO_COLOR: the plugin's output rule."""

from __future__ import annotations

import io

import pytest

from tokenbudget_api.tokenbudget import Stage
from tokenbudget_cli.console import console, stage_text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    console(out).print(stage_text(Stage.BLOCK))
    assert out.getvalue() == "\x1b[1;31mBlock\x1b[0m\n"  # bold red


def test_no_color_is_honoured_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    out = Terminal()
    console(out).print(stage_text(Stage.BLOCK))
    assert out.getvalue() == "\x1b[1mBlock\x1b[0m\n"  # still bold, no colour


def test_a_pipe_gets_plain_wide_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    console(out).print(stage_text(Stage.BLOCK) + " " + "x" * 150)
    assert out.getvalue() == "Block " + "x" * 150 + "\n"  # no colour, and not wrapped at 80 columns
