"""What `callscribe listen` shows: transcripts as a person reads them, or the messages themselves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TextIO

from callscribe.client.terminal import Terminal, visible
from callscribe.client.transcript_view import TranscriptView, close_description

__all__ = ["HumanOutput", "JsonOutput", "Output"]


class Output(Protocol):
    names_speakers: bool
    """Whether it wants `tracks` (the channels' speakers) before a call's first message."""

    def info(self, text: str) -> None: ...
    def tracks(self, call_sid: str, tracks: Sequence[str]) -> None: ...
    def message(self, call_sid: str, text: str) -> None: ...
    def closed(self, call_sid: str, code: int | None, reason: str | None) -> None: ...
    def finish(self) -> None: ...


class HumanOutput:
    """Transcripts as a person reads them (see `transcript_view`); `labelled` prefixes each line
    with its call, for `--all`."""

    names_speakers = True

    def __init__(self, terminal: Terminal, *, labelled: bool = False) -> None:
        self.terminal = terminal
        self.labelled = labelled
        self._views: dict[str, TranscriptView] = {}

    def view(self, call_sid: str) -> TranscriptView:
        if call_sid not in self._views:
            self._views[call_sid] = TranscriptView(f"[{_short(call_sid)}] " if self.labelled else "")
        return self._views[call_sid]

    def info(self, text: str) -> None:
        self.terminal.show([TranscriptView().info(text)])

    def tracks(self, call_sid: str, tracks: Sequence[str]) -> None:
        self.view(call_sid).tracks = tuple(tracks)

    def message(self, call_sid: str, text: str) -> None:
        self.terminal.show(self.view(call_sid).receive(text))

    def closed(self, call_sid: str, code: int | None, reason: str | None) -> None:
        self.terminal.show(self.view(call_sid).closed(code, reason))
        del self._views[call_sid]

    def finish(self) -> None:
        self.terminal.finish()


@dataclass
class JsonOutput:
    """The messages themselves, one per line on `out`; the rest on `err`. With `tag_calls`
    (`--all`), a message that does not name its call gets a `callSid` field."""

    out: TextIO
    err: TextIO
    tag_calls: bool = False
    names_speakers = False

    def info(self, text: str) -> None:
        print(f"callscribe listen: {visible(text)}", file=self.err, flush=True)

    def tracks(self, call_sid: str, tracks: Sequence[str]) -> None:
        pass

    def message(self, call_sid: str, text: str) -> None:
        if self.tag_calls:
            try:
                message = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deep
                message = None
            if isinstance(message, dict) and "callSid" not in message:
                text = json.dumps({"callSid": call_sid, **message})
        print(" ".join(text.split("\n")), file=self.out, flush=True)

    def closed(self, call_sid: str, code: int | None, reason: str | None) -> None:
        self.info(f"call {call_sid}: closed: {close_description(code, reason)}")

    def finish(self) -> None:
        self.out.flush()


def _short(call_sid: str) -> str:
    return call_sid if len(call_sid) <= 12 else f"{call_sid[:2]}..{call_sid[-6:]}"
