"""Drawing: colours and an interim line kept in place on a terminal, plain finished lines elsewhere."""

from __future__ import annotations

import io

import pytest

from callscribe.client.terminal import Terminal
from callscribe.client.transcript_view import Interim, Line

ERASE = "\r\x1b[K"


def test_elsewhere_only_finished_lines_are_written_plainly() -> None:
    out = io.StringIO()
    terminal = Terminal(out, tty=False)
    terminal.show([Interim("0", "00:00  Caller  Hel ...", "caller"), Line("00:00  Caller  Hello.", "caller")])
    terminal.show([Line("!! Error: gone", "error")])
    terminal.finish()
    assert out.getvalue() == "00:00  Caller  Hello.\n!! Error: gone\n"


def test_on_a_terminal_the_interim_is_overwritten_in_place_and_lines_are_coloured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = io.StringIO()
    terminal = Terminal(out, tty=True)
    terminal.show([Interim("0", "Hel ...", "caller")])
    terminal.show([Interim("0", "Hello th ...", "caller")])
    terminal.show([Interim("0", "", "caller"), Line("Hello there.", "caller")])
    terminal.show([Line("Hi.", "other")])
    assert out.getvalue() == (
        f"{ERASE}\x1b[2;36mHel ...\x1b[0m"
        f"{ERASE}\x1b[2;36mHello th ...\x1b[0m"
        f"{ERASE}"  # the interim is cleared
        "\x1b[36mHello there.\x1b[0m\n"
        "\x1b[32mHi.\x1b[0m\n"
    )


def test_a_line_printed_while_an_interim_shows_goes_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    terminal = Terminal(out, tty=True)
    terminal.show([Interim("0", "caller speaking ...", "caller")])
    terminal.show([Line("!! Reconnecting: ...", "notice")])
    terminal.finish()
    assert out.getvalue() == (
        f"{ERASE}caller speaking ...{ERASE}!! Reconnecting: ...\n{ERASE}caller speaking ...{ERASE}"
    )


def test_the_latest_of_several_interims_shows_and_the_other_returns_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    terminal = Terminal(out, tty=True)
    terminal.show([Interim("a0", "first ...", "caller"), Interim("b1", "second ...", "other")])
    out.truncate(0)
    out.seek(0)
    terminal.show([Interim("b1", "", "other")])
    assert out.getvalue() == f"{ERASE}first ..."


def test_an_interim_longer_than_the_terminal_is_cut_so_it_can_be_overwritten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "20")
    out = io.StringIO()
    Terminal(out, tty=True).show([Interim("0", "x" * 50, "caller")])
    assert out.getvalue() == ERASE + "x" * 16 + "..."
