"""The benchmark's simulated calls send exactly what the simulator sends, and carry their number."""

from __future__ import annotations

import base64

from callscribe.bench.calls import Audio, SimCall, media_text, tag_index
from callscribe.core.twilio import Media, TwilioStream
from callscribe.testing.call_plan import PlannedFrame, connected_message, start_message, twilio_media_event


def test_simulated_calls_send_exactly_what_the_simulator_sends_and_parse_as_media() -> None:
    audio = Audio()
    call = SimCall(7, audio)
    k = 3
    ours = media_text(2 + 2 * k, "outbound", k + 1, 20 * k, audio.outbound[k], call.stream_sid)
    planned = PlannedFrame("outbound", 20 * k, k + 1, base64.b64decode(audio.outbound[k]), 0.0)
    assert ours == twilio_media_event(call.spec, planned, 2 + 2 * k)
    stream = TwilioStream()
    stream.receive(connected_message())
    stream.receive(start_message(call.spec, 1))
    first = stream.receive(media_text(2, "inbound", 1, 0, audio.tagged_first_frame(7), call.stream_sid))
    assert isinstance(first, Media) and len(first.media.payload) == 160
    assert tag_index(first.media.payload) == 7
    assert tag_index(b"\xff" * 160) is None
