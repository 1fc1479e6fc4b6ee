"""The sans-IO core: protocols, decisions and audio as pure code.

Nothing here does IO or knows about Trio, Quart, Hypercorn, httpx or Redis (tests/test_architecture.py
enforces it). Data goes in, events and bytes to send come out, and time is an argument. Every
protocol decision (what a Twilio frame means, how tracks are mixed, when to retry Deepgram, which
replayed final to drop, when a caller is patched to a game) is made here and tested here.
"""
