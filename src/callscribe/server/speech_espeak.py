"""The espeak-ng speech engine (see speech.py for the interface): the local program, no account
needed, a robotic voice. It writes a 22050 Hz 16-bit mono WAV stream to stdout, converted as it
arrives by :class:`callscribe.core.audio.WavToMulaw` (anti-aliased resampling to 8 kHz, mu-law)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

from callscribe.core.audio import WavToMulaw
from callscribe.server.speech_engine import ERROR_BODY_LIMIT, NoAudio, SpeechError

#: Longest text :class:`EspeakEngine` speaks (it goes on the command line; Linux allows 128 KiB).
ESPEAK_MAX_TEXT_BYTES: Final = 100_000


class _EspeakAudio:
    """espeak-ng's stdout converted to mu-law as it arrives."""

    def __init__(self, process: trio.Process, program: str) -> None:
        self.process = process
        self._program = program
        self._decoder = WavToMulaw()
        self._ended = False

    def __aiter__(self) -> _EspeakAudio:
        return self

    async def __anext__(self) -> bytes:
        stdout = self.process.stdout
        assert stdout is not None
        # Bounded: each round reads from a pipe that ends when the process does.
        while not self._ended:
            data = await stdout.receive_some(65536)
            if not data:
                self._ended = True
                return await self._end()
            out = self._convert(self._decoder.feed, data)
            if out:
                return out
        raise StopAsyncIteration

    async def _end(self) -> bytes:
        status = await self.process.wait()
        if status != 0:
            message = " ".join((await self._stderr_text()).split()) or "no message"
            raise SpeechError(f"{self._program} failed (exit status {status}): {message}")
        tail = self._convert(self._decoder.finish)
        if tail:
            return tail
        raise StopAsyncIteration

    def _convert(self, step: Callable[..., bytes], *data: bytes | bytearray) -> bytes:
        """One step of turning the program's audio into 8 kHz mu-law; bad audio is a SpeechError."""
        try:
            return step(*data)
        except ValueError as error:
            raise SpeechError(f"{self._program} wrote audio that cannot be converted: {error}") from error

    async def _stderr_text(self) -> str:
        """What the (exited) process wrote to stderr: a line or two, far below a pipe's buffer."""
        stderr = self.process.stderr
        assert stderr is not None
        text = bytearray()
        with trio.move_on_after(1):
            while len(text) < ERROR_BODY_LIMIT and (chunk := await stderr.receive_some(4096)):
                text += chunk
        return text[:ERROR_BODY_LIMIT].decode("utf-8", "replace")


class EspeakEngine:
    """Local text to speech with the ``espeak-ng`` program.

    Runs ``espeak-ng --stdout -v VOICE [-s RATE] -- TEXT`` (after ``--`` text starting with
    ``-`` is never an option) and converts its WAV output (22050 Hz, 16-bit mono) to 8 kHz
    mu-law as it streams. ``rate`` is in words per minute (espeak-ng's default is 175). Text
    goes on the command line in UTF-8, so it is limited to :data:`ESPEAK_MAX_TEXT_BYTES`.
    A missing program or too long a text raises :class:`SpeechError` on entering
    ``synthesize``; a failing program (e.g. an unknown voice) raises it from the iteration with
    espeak-ng's message. Leaving the block early or being cancelled kills the process.
    """

    name = "espeak-ng"

    def __init__(self, voice: str = "en-us", rate: int | None = None, executable: str = "espeak-ng") -> None:
        if rate is not None and not 1 <= rate <= 1000:
            raise ValueError(f"espeak-ng rate must be 1..1000 words per minute, got {rate}")
        if not voice or voice.startswith("-"):
            raise ValueError(f"bad espeak-ng voice {voice!r}")
        self.voice = voice
        self.rate = rate
        self.executable = executable

    def available(self) -> bool:
        """Whether the program can be found (to warn at start-up rather than on first use)."""
        return shutil.which(self.executable) is not None

    def command(self, text: str, program: str | None = None) -> list[str]:
        """The command line that speaks ``text``."""
        cmd = [program or self.executable, "--stdout", "-v", self.voice]
        if self.rate is not None:
            cmd += ["-s", str(self.rate)]
        return [*cmd, "--", text.replace("\0", " ")]

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """Speak ``text``: yields an async iterator of mu-law chunks (see the class doc)."""
        if not text.strip():
            yield NoAudio()
            return
        size = len(text.encode("utf-8"))
        if size > ESPEAK_MAX_TEXT_BYTES:
            raise SpeechError(f"text too long for espeak-ng ({size} bytes of UTF-8; at most {ESPEAK_MAX_TEXT_BYTES})")
        program = shutil.which(self.executable)
        if program is None:
            raise SpeechError(
                f"{self.executable} is not installed (not found on PATH); install espeak-ng "
                "or set a Deepgram API key to use Deepgram Aura"
            )
        try:
            process = await trio.lowlevel.open_process(
                # in UTF-8, which espeak-ng reads in any locale (encoded for a C locale, "é" fails)
                [os.fsencode(program), *(arg.encode("utf-8") for arg in self.command(text)[1:])],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as error:
            raise SpeechError(f"cannot run {program}: {error}") from error
        try:
            yield _EspeakAudio(process, os.path.basename(program))
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(5):
                    await process.wait()  # reaps it
                for pipe in (process.stdout, process.stderr):
                    if pipe is not None:
                        await pipe.aclose()
