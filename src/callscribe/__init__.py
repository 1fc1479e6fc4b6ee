"""callscribe: live phone-call transcription (Twilio Media Streams in, Deepgram live speech-to-text,
transcripts out over WebSockets).

The public face::

    from callscribe import Settings, CallSettings, create_app, serve

    settings = Settings(host="127.0.0.1", port=5000, call=CallSettings(deepgram_api_key="..."))
    trio.run(serve, settings)

`create_app` builds the Quart-Trio app alone, for tests or another server: it serves every route
but `/twilio`, which `serve` answers on its own listener (the media path, off Hypercorn: give the
app's `Server.routes` to `callscribe.server.listener.serve`, as `serve` does); `callscribe.testing`
has a fake Deepgram and a Twilio call simulator for your own tests; `callscribe.core` holds the
protocol logic without IO. The names below are imported when first used, so `import callscribe`
stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["CallSettings", "Settings", "__version__", "create_app", "serve"]

if TYPE_CHECKING:
    from callscribe.server.app import create_app
    from callscribe.server.call_settings import CallSettings
    from callscribe.server.config import ServerSettings as Settings
    from callscribe.server.serve import serve

_LAZY = {
    "create_app": ("callscribe.server.app", "create_app"),
    "CallSettings": ("callscribe.server.call", "CallSettings"),
    "Settings": ("callscribe.server.config", "ServerSettings"),
    "serve": ("callscribe.server.serve", "serve"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'callscribe' has no attribute {name!r}")
    import importlib

    module, attribute = _LAZY[name]
    return getattr(importlib.import_module(module), attribute)
