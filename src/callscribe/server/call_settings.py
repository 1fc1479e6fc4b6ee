"""How one call runs: `CallSettings`, which `callscribe serve` fills from its options (config.py)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from callscribe.core.deepgram import DEFAULT_URL


@dataclass(frozen=True)
class CallSettings:
    """How one call runs (`callscribe serve` sets them from its options; config.py)."""

    deepgram_url: str = DEFAULT_URL
    """The live endpoint with its query; the audio's encoding, rate and channels are set per call."""
    deepgram_api_key: str = ""
    window_ms: int = 100
    """Audio mixed and sent to Deepgram per message (CALLSCRIBE_WINDOW_MS)."""
    jitter_ms: int = 40
    """How far one track may run past a window before the window goes out, a late track padded with
    silence (CALLSCRIBE_JITTER_MS)."""
    keepalive_s: float = 5.0
    """With no audio to send for this long, a KeepAlive goes to Deepgram (it closes idle streams)."""
    connect_timeout_s: float = 5.0
    """One attempt to open a Deepgram connection (TCP, TLS and the upgrade)."""
    finalize_timeout_s: float = 5.0
    """After the call's audio ends: how long Deepgram may take to send its last results."""
    start_timeout_s: float = 10.0
    """A Twilio socket that sends no `start` within this is closed."""
    send_timeout_s: float = 10.0
    """A send to Deepgram stuck this long (a peer that stopped reading) counts as a failed connection."""
    media_timeout_s: float = 60.0
    """Twilio sends a frame every 20 ms per track: a stream silent this long after its start has
    gone (a connection dropped with no FIN or RST), and its call ends (up to a tenth of it, at most
    a second, and a window earlier: the deadline is moved on that often, when a window is handed
    over, not every window). (Generous: KeepAlive covers shorter gaps.)"""
    answer_timeout_s: float = 30.0
    """A Deepgram connection that says nothing at all for this long while this much audio goes to it is
    taken as lost (Deepgram sends results, empty ones for silence, every few seconds of audio)."""
    backlog_s: float = 60.0
    """Audio kept for a replay after a reconnect until Deepgram's finals cover it; beyond it the oldest is dropped."""
    max_reconnects: int = 8
    """Retries in a row after a failure (CALLSCRIBE_DEEPGRAM_RETRIES): a call gives up on Deepgram after
    1 + this many failed attempts in a row; a connection that produced results starts the count again."""
    backoff_initial_s: float = 0.5
    """The first retry's delay; each further retry in a row doubles it, up to `backoff_max_s` (each
    delay times a random factor between 0.5 and 1: deepgram_policy.py)."""
    backoff_max_s: float = 8.0
    replay_rate: float = 1.25
    """After a reconnect, the backlog is replayed at most this many times real time."""
    deepgram_ssl_context: ssl.SSLContext | None = None
