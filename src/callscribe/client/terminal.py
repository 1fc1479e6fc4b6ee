"""Drawing a transcript view's lines on a text stream.

On a terminal each speaker has a colour, notices stand out, and the latest interim result stays on
the bottom line, overwritten in place (carriage return and erase-line) until its final arrives.
Anywhere else (a pipe, a file, `NO_COLOR` set) only the finished lines are written, plainly.
"""

from __future__ import annotations

import os
import shutil
import sys
import unicodedata
from collections.abc import Iterable
from typing import TextIO

from callscribe.client.transcript_view import Interim, Kind, Line, Shown

__all__ = ["COLOURS", "Terminal", "stdout_gone"]

COLOURS: dict[Kind, str] = {
    "caller": "36",  # cyan
    "other": "32",  # green
    "notice": "1;33",  # bold yellow
    "error": "1;31",  # bold red
    "info": "2",  # dim
    "game": "35",  # magenta
}
_ERASE_LINE = "\r\x1b[K"


class Terminal:
    def __init__(self, out: TextIO, *, tty: bool | None = None, colour: bool | None = None) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        wanted = self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.colour = wanted if colour is None else colour
        self._interims: dict[str, Interim] = {}
        """Interims shown, by key, the latest last."""
        self._drawn = False
        """Whether the bottom line holds an interim."""

    def show(self, shown: Iterable[Shown]) -> None:
        for item in shown:
            if isinstance(item, Line):
                self._line(item)
            elif self.tty:
                self._interims.pop(item.key, None)
                if item.text:
                    self._interims[item.key] = item
                self._redraw()
        self.out.flush()

    def finish(self) -> None:
        """Leave the terminal as it was: no half-drawn interim line."""
        if self._drawn:
            self.out.write(_ERASE_LINE)
            self._drawn = False
        self._interims.clear()
        self.out.flush()

    def _line(self, line: Line) -> None:
        if self._drawn:
            self.out.write(_ERASE_LINE)
        self.out.write(self._paint(visible(line.text), COLOURS[line.kind]) + "\n")
        self._drawn = False
        if self._interims:
            self._redraw()

    def _redraw(self) -> None:
        latest = next(reversed(self._interims.values()), None)
        if latest is None:
            if self._drawn:
                self.out.write(_ERASE_LINE)
                self._drawn = False
            return
        # A line that wraps cannot be taken back with a carriage return: cut it to the width.
        width = max(10, shutil.get_terminal_size().columns - 1)
        text = fitted(visible(latest.text), width)
        self.out.write(_ERASE_LINE + self._paint(text, "2;" + COLOURS[latest.kind]))
        self._drawn = True

    def _paint(self, text: str, sgr: str) -> str:
        return f"\x1b[{sgr}m{text}\x1b[0m" if self.colour else text


def visible(text: str) -> str:
    """`text` with its control characters (escape sequences, C1 codes, bells...) made visible as
    U+FFFD: what the server or Deepgram says must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join("\ufffd" if unicodedata.category(ch) == "Cc" else ch for ch in text)


def columns(ch: str) -> int:
    """The terminal columns `ch` takes: 2 for East Asian wide ones, 0 for combining marks."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def fitted(text: str, width: int) -> str:
    """`text` cut to `width` terminal columns, ending in "..." when cut."""
    if len(text) <= width // 2 or sum(map(columns, text)) <= width:
        return text
    kept, used = [], 0
    for ch in text:
        used += columns(ch)
        if used > width - 3:
            break
        kept.append(ch)
    return "".join(kept) + "..."


def stdout_gone() -> None:
    """Standard output's reader went away (`| head`): what is still to be written goes nowhere,
    rather than failing again as Python flushes it at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
