"""Records to write into a store in tests: a call's start, its finals (as the fake Deepgram says
them), its end."""

from __future__ import annotations

from callscribe.core.call_record import CallEnd, CallStart, Outcome
from callscribe.server.store import EndWrite, FinalWrite, StartWrite
from callscribe.testing.fake_deepgram_results import compact_json, results_message


def start(
    call_sid: str,
    at: float = 1_000_000.0,
    *,
    from_number: str | None = "+15550100",
    to_number: str | None = "+15550199",
    tracks: tuple[str, ...] = ("inbound", "outbound"),
) -> StartWrite:
    return StartWrite(
        CallStart(
            call_sid=call_sid,
            stream_sid="MZ" + call_sid[2:],
            account_sid="AC1",
            tracks=tracks,
            started_at=at,
            from_number=from_number,
            to_number=to_number,
            direction="inbound",
            parameters={"From": from_number or "", "route": "transcribe"},
        )
    )


def final_text(
    text: str, *, channel: int = 0, at: float = 0.0, duration: float = 1.0, request_id: str = "req-1"
) -> str:
    message = results_message(
        request_id=request_id, channel=channel, channels=2, start=at, end=at + duration, is_final=True, transcript=text
    )
    return compact_json(message)


def final(
    call_sid: str, seq: int, text: str, *, channel: int = 0, at: float | None = None, **kwargs: object
) -> FinalWrite:
    position = float(seq - 1) if at is None else at
    raw = final_text(text, channel=channel, at=position, **kwargs)  # type: ignore[arg-type]
    return FinalWrite(call_sid, seq, raw, 1_000_000.0 + position)


def end(
    call_sid: str, finals: int, at: float = 1_000_060.0, outcome: Outcome = Outcome.ENDED, reason: str = "call ended"
) -> EndWrite:
    return EndWrite(
        call_sid,
        CallEnd(ended_at=at, outcome=outcome, reason=reason, audio_s=60.0, padding_s=0.5, deepgram_connections=1),
        finals,
    )
