"""What the fake Deepgram says, and when; pure, no IO.

Results describe the audio they cover ("audio 1.00 to 2.00") or carry a fixed transcript, with words
spread evenly over the segment. :class:`ResultSchedule` decides which results are due: one final per
transcribed channel per segment of its audio, each covering only the audio since the previous final;
with interim results a non-final one about half-way through each segment; finals for whatever is
pending on a flush (``Finalize``/``CloseStream``), and after ``CloseStream`` an empty one (duration 0)
for a channel with nothing pending. :class:`VoiceEvents` adds ``SpeechStarted`` and ``UtteranceEnd``
where the results start and stop saying words.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CONFIDENCE",
    "MODEL_INFO",
    "MODEL_UUID",
    "DueResult",
    "ResultSchedule",
    "VoiceEvents",
    "compact_json",
    "metadata_message",
    "results_message",
    "scripted_transcript",
    "seconds",
    "segment_samples",
]

MODEL_UUID: Final = "fa6ede00-0000-4000-8000-00000000fa6e"
MODEL_INFO: Final[dict[str, str]] = {"name": "fake", "version": "0", "arch": "fake"}
CONFIDENCE: Final = 0.99
#: Times in messages are rounded to this many decimals (avoids 0.30000000000000004).
TIME_DECIMALS: Final = 6


def compact_json(message: dict[str, Any]) -> str:
    """JSON without spaces, as Deepgram sends it."""
    return json.dumps(message, separators=(",", ":"))


def seconds(samples: int | float, sample_rate: int) -> float:
    """``samples`` at ``sample_rate`` as seconds, rounded like the times in Deepgram's messages."""
    return round(samples / sample_rate, TIME_DECIMALS)


def _words(transcript: str, start: float, end: float) -> list[dict[str, Any]]:
    """Deepgram-style word list for ``transcript``, spread evenly over ``[start, end]``."""
    tokens = transcript.split()
    if not tokens:
        return []
    step = (end - start) / len(tokens)
    words = []
    for i, token in enumerate(tokens):
        words.append(
            {
                "word": token.strip(string.punctuation).lower() or token.lower(),
                "start": round(start + i * step, TIME_DECIMALS),
                "end": round(start + (i + 1) * step, TIME_DECIMALS),
                "confidence": CONFIDENCE,
                "punctuated_word": token,
            }
        )
    return words


def results_message(
    *,
    request_id: str,
    channel: int,
    channels: int,
    start: float,
    end: float,
    is_final: bool,
    from_finalize: bool = False,
    transcript: str | None = None,
    endpointing: bool = True,
) -> dict[str, Any]:
    """A ``Results`` message as Deepgram sends it, covering ``[start, end]`` seconds of ``channel``.

    ``speech_final`` only on a final that endpointing ended: not on one a flush cut, nor with
    ``endpointing=false``. A result covering no audio says nothing."""
    if end <= start:
        text = ""
    else:
        text = transcript if transcript is not None else f"audio {start:.2f} to {end:.2f}"
    return {
        "type": "Results",
        "channel_index": [channel, channels],
        "duration": round(end - start, TIME_DECIMALS),
        "start": start,
        "is_final": is_final,
        "speech_final": is_final and endpointing and not from_finalize,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {
                    "transcript": text,
                    "confidence": CONFIDENCE if text else 0.0,
                    "words": _words(text, start, end),
                }
            ]
        },
        "metadata": {"request_id": request_id, "model_info": dict(MODEL_INFO), "model_uuid": MODEL_UUID},
    }


def metadata_message(*, request_id: str, sha256: str, created: str, duration: float, channels: int) -> dict[str, Any]:
    """The ``Metadata`` message sent before closing on ``CloseStream``."""
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": created,
        "duration": round(duration, TIME_DECIMALS),
        "channels": channels,
        "models": [MODEL_UUID],
        "model_info": {MODEL_UUID: dict(MODEL_INFO)},
    }


def segment_samples(result_every_s: float, sample_rate: int) -> int:
    """Samples per final result for ``result_every_s``; 0 (finals only on flush) unless it is finite and > 0."""
    if result_every_s > 0 and math.isfinite(result_every_s):
        return max(0, round(result_every_s * sample_rate))
    return 0


def scripted_transcript(lines: Sequence[Sequence[str]], result: DueResult, segment: int) -> str:
    """What a result says when each channel follows a script: the final of a channel's n-th segment
    says line n of its lines (over again from the first when they run out; a channel without
    lines says nothing), the interim before it the first half of those words."""
    channel_lines = lines[result.channel] if result.channel < len(lines) else ()
    if not channel_lines:
        return ""
    line = channel_lines[(result.start // segment if segment else 0) % len(channel_lines)]
    if result.is_final:
        return line
    words = line.split()
    return " ".join(words[: (len(words) + 1) // 2])


@dataclass(frozen=True)
class DueResult:
    """A result to send: ``[start, end)`` in samples of transcribed ``channel``."""

    channel: int
    start: int
    end: int
    is_final: bool
    from_finalize: bool = False


class ResultSchedule:
    """Which results are due, per transcribed channel, as its audio arrives.

    ``available[channel]`` passed in is the number of samples received so far on each transcribed
    channel; the schedule remembers what earlier results covered.
    """

    def __init__(self, channels: int, segment: int, *, interim_results: bool) -> None:
        """``segment``: samples per final (0: finals only on :meth:`flush`)."""
        self._segment = segment
        self._interim_results = interim_results
        self._reported = [0] * channels
        """Per channel: samples already covered by a final."""
        self._interim_sent = [False] * channels
        """Per channel: whether the current segment's interim went out."""

    def on_audio(self, available: Sequence[int]) -> list[DueResult]:
        """The finals of every completed segment and the interims now due, channel by channel."""
        segment = self._segment
        due: list[DueResult] = []
        if segment == 0:
            return due
        for channel, received in enumerate(available):
            while received - self._reported[channel] >= segment:
                start = self._reported[channel]
                due.append(DueResult(channel, start, start + segment, is_final=True))
                self._reported[channel] = start + segment
                self._interim_sent[channel] = False
            pending = received - self._reported[channel]
            if self._interim_results and not self._interim_sent[channel] and pending > 0 and 2 * pending >= segment:
                due.append(DueResult(channel, self._reported[channel], received, is_final=False))
                self._interim_sent[channel] = True
        return due

    def flush(self, available: Sequence[int], *, closing: bool) -> list[DueResult]:
        """Finals (``from_finalize``) for every channel's audio not yet covered by one; with
        ``closing`` (``CloseStream``) an empty one for a channel that had audio but has none pending."""
        due: list[DueResult] = []
        for channel, received in enumerate(available):
            reported = self._reported[channel]
            if received > reported or (closing and received > 0):
                due.append(DueResult(channel, reported, received, is_final=True, from_finalize=True))
                self._reported[channel] = received
                self._interim_sent[channel] = False
        return due


class VoiceEvents:
    """``SpeechStarted`` (``vad_events=true``) and ``UtteranceEnd`` (``utterance_end_ms``) per transcribed
    channel, from what its results say: speech starts with the first result with words after silence
    (or at the start), and an utterance ends with the first final without words that comes
    ``utterance_end_s`` or more after the last word. Both name their channel ``channel``, not
    ``channel_index`` as ``Results`` do."""

    def __init__(self, channels: int, *, vad_events: bool, utterance_end_s: float | None) -> None:
        self._channels = channels
        self._vad_events = vad_events
        self._utterance_end_s = utterance_end_s
        self._speaking = [False] * channels
        self._last_word_end: list[float | None] = [None] * channels
        """Per channel: the end of the last word of an utterance not yet ended."""

    def before(self, channel: int, start: float, *, spoken: bool) -> list[dict[str, Any]]:
        """What to send before a result (interim or final) of ``channel`` that starts at ``start``."""
        if not spoken or self._speaking[channel]:
            return []
        self._speaking[channel] = True
        if not self._vad_events:
            return []
        return [{"type": "SpeechStarted", "channel": [channel, self._channels], "timestamp": start}]

    def after_final(self, channel: int, end: float, *, spoken: bool) -> list[dict[str, Any]]:
        """What to send after a final of ``channel`` that ends at ``end`` (its last word's end, if ``spoken``)."""
        if spoken:
            self._last_word_end[channel] = end
            return []
        self._speaking[channel] = False
        last = self._last_word_end[channel]
        if self._utterance_end_s is None or last is None or end - last < self._utterance_end_s:
            return []
        self._last_word_end[channel] = None
        return [{"type": "UtteranceEnd", "channel": [channel, self._channels], "last_word_end": last}]
