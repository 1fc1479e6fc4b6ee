"""Stand-ins for the services around callscribe, for tests and for trying it without accounts:
a fake Deepgram live STT server, a fake Deepgram Aura (text-to-speech) server, and a Twilio Media
Streams call simulator. Import them in your own tests; the server never does."""
