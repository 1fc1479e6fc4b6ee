"""Clients of a running callscribe: `callscribe listen`, a terminal subscriber.

`transcript_view` decides what a person sees of a call's messages (pure); `terminal` draws it
(colours and an interim line kept in place on a terminal, plain lines otherwise); `outputs` is
that or, with `--json`, the messages themselves; `listen` is the WebSocket side: one call, the only
call, or every call as it starts.
"""
