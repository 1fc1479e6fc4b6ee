"""callscribe: live phone-call transcription relay (Twilio Media Streams -> Deepgram -> WebSocket subscribers)."""

__version__ = "0.1.0"
