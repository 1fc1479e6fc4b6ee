"""The Trio shell: sockets, tasks and time around the core.

Routes (`app`), the supervisor that owns every call, one call's nursery (`call`), the hub and its
Redis engine, games, speech engines, the Deepgram connection, settings and the accept loop. It
never imports `callscribe.testing` or `callscribe.bench`.
"""
