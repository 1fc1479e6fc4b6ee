"""What every speech engine is (speech.py has the engines and the choice between them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

ERROR_BODY_LIMIT = 4096
"""The most of an error's text (an HTTP body, a program's stderr) kept for its message."""


class SpeechError(Exception):
    """Speech could not be produced; ``str()`` says why. ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class SpeechEngine(Protocol):
    """A text-to-speech engine producing 8 kHz mu-law (see speech.py's module documentation)."""

    name: str

    def synthesize(self, text: str) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """An async context manager giving an async iterator of mu-law chunks for ``text``."""
        ...


class NoAudio:
    """The audio of blank text."""

    def __aiter__(self) -> NoAudio:
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration
