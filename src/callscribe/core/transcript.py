"""A call's transcript: Deepgram's final results as utterances, and the export formats.

`parse_final` reads one final `Results` message (the exact JSON a subscriber received) into an
`Utterance`: its channel and the speaker of that channel, its start and end in call time, its
transcript and confidence, and the Deepgram request it came from. Input that is not a final result
gives None, never an exception.

Times: a final covers `start` .. `start + duration`; when Deepgram sent word timings they refine it
to the first word's start and the last word's end (so a cue is not stretched over the silence
before and after the words). A final with an empty `words` list keeps `start` and `duration`.

Speakers: Deepgram's channel i is the call's track i (`start.tracks` in channel order, kept with
the call): with both tracks channel 0 is the caller (Twilio's inbound track) and channel 1 the
other party (outbound); an inbound-only call has the caller alone, an outbound-only call
(`<Stream track="outbound_track">`) the other party alone, on channel 0. The labels are
configurable (`SpeakerLabels`).

Exports, one cue per final that has words to show (a final with an empty transcript is silence:
it is kept in the JSON lines, which are Deepgram's finals as they came, but gets no cue):

- plain text, one line per final: `[mm:ss] Caller: hello`
- WebVTT with voice spans (`<v Caller>hello`), written with webvtt-py
- SRT (`Caller: hello`), written with srt
- JSON lines: each final exactly as Deepgram sent it (rebased to call time)
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
import srt
import webvtt

from callscribe.core.twilio import CALLER_TRACK, track_of_channel

DEFAULT_SPEAKER_LABELS = ("Caller", "Other party")
MIN_CUE_S = 0.001
"""A cue's end must come after its start: a final of no duration gets a cue this long."""
_LABEL_FORBIDDEN = set("<>&,\n\r")


@dataclass(frozen=True)
class SpeakerLabels:
    """What channel 0 (the caller) and channel 1 (the other party) are called in transcripts."""

    caller: str = DEFAULT_SPEAKER_LABELS[0]
    other_party: str = DEFAULT_SPEAKER_LABELS[1]

    @classmethod
    def parse(cls, text: str) -> SpeakerLabels:
        """ "Caller,Other party" -> the two labels. ValueError (one line) for anything else."""
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"speaker labels must be two names separated by a comma, like 'Caller,Agent', not {text!r}"
            )
        for part in parts:
            if _LABEL_FORBIDDEN & set(part) or len(part) > 40:
                raise ValueError(f"speaker label {part!r} must be at most 40 characters without < > & or newlines")
        return cls(parts[0], parts[1])

    def for_channel(self, channel: int, tracks: Sequence[str] = ()) -> str:
        """The speaker of Deepgram's `channel` in a call of these `tracks` (without them: channel 0
        is the caller)."""
        return self.caller if track_of_channel(channel, tracks) == CALLER_TRACK else self.other_party


DEFAULT_LABELS = SpeakerLabels()


@dataclass(frozen=True)
class Utterance:
    """One final result of a call."""

    seq: int
    """Its place among the call's finals: 1, 2, 3, ..."""
    channel: int
    speaker: str
    start: float
    end: float
    text: str
    confidence: float
    request_id: str
    """The Deepgram request (connection) it came from; "" if the message did not say."""
    raw: str
    """The final exactly as subscribers received it."""

    def json(self) -> dict[str, object]:
        """The utterance as the REST API and webhooks show it."""
        return {
            "channel": self.channel,
            "speaker": self.speaker,
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "confidence": self.confidence,
        }


# -- reading Deepgram's finals -------------------------------------------------------------------


class _Word(msgspec.Struct):
    start: float | None = None
    end: float | None = None


class _Alternative(msgspec.Struct):
    transcript: str = ""
    confidence: float = 0.0
    words: list[_Word] = []


class _Channel(msgspec.Struct):
    alternatives: list[_Alternative] = []


class _Metadata(msgspec.Struct):
    request_id: str = ""


class _Results(msgspec.Struct):
    type: str = ""
    is_final: bool = False
    start: float = 0.0
    duration: float = 0.0
    channel_index: list[int] = []
    channel: _Channel | None = None
    metadata: _Metadata | None = None


_decoder = msgspec.json.Decoder(_Results)


def parse_final(
    raw: str | bytes, seq: int, labels: SpeakerLabels = DEFAULT_LABELS, tracks: Sequence[str] = ()
) -> Utterance | None:
    """The utterance of a final `Results` message of a call of these `tracks`; None for anything
    else (interim, other types, malformed JSON, wrong types)."""
    try:
        message = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return None
    if message.type != "Results" or not message.is_final:
        return None
    channel = max(0, message.channel_index[0]) if message.channel_index else 0
    alternatives = message.channel.alternatives if message.channel else []
    best = alternatives[0] if alternatives else _Alternative()
    start, end = message.start, message.start + message.duration
    timed = [word for word in best.words if word.start is not None and word.end is not None]
    if timed:
        start, end = timed[0].start, timed[-1].end  # type: ignore[assignment]
    text = " ".join(best.transcript.split()).replace("\0", "\ufffd")  # PostgreSQL keeps no NUL in text
    return Utterance(
        seq=seq,
        channel=channel,
        speaker=labels.for_channel(channel, tracks),
        start=round(start, 3),
        end=round(max(end, start), 3),
        text=text,
        confidence=best.confidence,
        request_id=message.metadata.request_id if message.metadata else "",
        raw=raw if isinstance(raw, str) else raw.decode("utf-8", "replace"),
    )


# -- exports -------------------------------------------------------------------------------------

FORMATS = {
    "txt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "json": "application/jsonl; charset=utf-8",
}
"""Export formats by file extension, with their media types."""


def spoken(utterances: Iterable[Utterance]) -> list[Utterance]:
    """The utterances that have words, in order: those that get a cue or a line."""
    return [u for u in utterances if u.text]


def clock(seconds: float) -> str:
    """`mm:ss` of call time (minutes go past 59 on calls over an hour)."""
    whole = max(0, int(seconds))
    return f"{whole // 60:02d}:{whole % 60:02d}"


def to_text(utterances: Iterable[Utterance]) -> str:
    return "".join(f"[{clock(u.start)}] {u.speaker}: {u.text}\n" for u in spoken(utterances))


def _cue_times(utterance: Utterance) -> tuple[float, float]:
    return utterance.start, max(utterance.end, utterance.start + MIN_CUE_S)


def _cues(utterances: Iterable[Utterance]) -> list[tuple[float, float, Utterance]]:
    """The spoken finals as cues, by start time (ties in arrival order): each channel's finals
    arrive on their own, so a short reply can arrive before a longer turn that began earlier, and
    WebVTT (and SRT players) want cues in start order."""
    return sorted(((*_cue_times(u), u) for u in spoken(utterances)), key=lambda cue: cue[0])


def _vtt_time(seconds: float) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_webvtt(utterances: Iterable[Utterance]) -> str:
    document = webvtt.WebVTT()
    for start, end, utterance in _cues(utterances):
        document.captions.append(
            webvtt.Caption(
                start=_vtt_time(start),
                end=_vtt_time(end),
                text=f"<v {utterance.speaker}>{_vtt_escape(utterance.text)}",
            )
        )
    content: str = document.content
    return content


def to_srt(utterances: Iterable[Utterance]) -> str:
    subtitles = []
    for index, (start, end, utterance) in enumerate(_cues(utterances), 1):
        subtitles.append(
            srt.Subtitle(
                index,
                datetime.timedelta(milliseconds=round(start * 1000)),
                datetime.timedelta(milliseconds=round(end * 1000)),
                f"{utterance.speaker}: {utterance.text}",
            )
        )
    return str(srt.compose(subtitles, reindex=False))


def to_json_lines(utterances: Iterable[Utterance]) -> str:
    """Every final as Deepgram sent it, one per line (finals of silence included)."""
    # Only CR and LF: JSON has them outside strings alone, while `splitlines` would also cut at
    # U+2028, U+2029 or U+0085, which may stand raw inside a string (and change the transcript).
    return "".join(u.raw.replace("\r\n", " ").replace("\r", " ").replace("\n", " ") + "\n" for u in utterances)


def export(utterances: Sequence[Utterance], kind: str) -> str:
    """The transcript in the format of extension `kind` (a key of `FORMATS`); ValueError otherwise."""
    if kind == "txt":
        return to_text(utterances)
    if kind == "vtt":
        return to_webvtt(utterances)
    if kind == "srt":
        return to_srt(utterances)
    if kind == "json":
        return to_json_lines(utterances)
    raise ValueError(f"unknown transcript format {kind!r}; one of {', '.join(FORMATS)}")
