"""Tests for callscribe.testing.demo's parts (the demo itself is run in tests/e2e/test_cli.py)."""

from __future__ import annotations

from callscribe.testing import demo


def test_demo_fake_keeps_no_audio_and_few_sessions() -> None:
    # The demo runs calls until Ctrl-C: its fake must not keep every call's audio and session.
    fake = demo.fake_deepgram()
    assert fake.keep_audio is False
    assert fake.keep_sessions is not None and 0 < fake.keep_sessions <= 100
    assert (fake.behaviour.api_key, fake.behaviour.lines) == (demo.API_KEY, demo.CONVERSATION)
