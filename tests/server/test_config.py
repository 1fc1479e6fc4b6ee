"""Server settings read from flags and an environment; where the health check finds the server."""

from __future__ import annotations

import argparse

import pytest

from callscribe.server.config import ConfigError, add_arguments, health_url, settings_from

LOCAL_DEEPGRAM = "ws://127.0.0.1:9/v1/listen"


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_an_empty_environment_is_empty_not_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAM_API_KEY", "from-the-process")
    monkeypatch.setenv("DEEPGRAM_SPEAK_URL", "https://speech.example.com/v1/speak")
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
        settings_from(flags(), {})
    # Aura is chosen only for a speech URL of the given environment, not of the process's.
    settings = settings_from(flags("--deepgram-api-key", "k", "--deepgram-url", LOCAL_DEEPGRAM), {})
    assert settings.speech == "espeak" and settings.call.deepgram_api_key == "k"
    assert settings_from(flags("--deepgram-url", LOCAL_DEEPGRAM)).speech == "aura"  # None: the process's


def test_the_token_secret_must_be_long_enough_for_hs256() -> None:
    environ = {"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_TOKEN_SECRET": "x" * 31}
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        settings_from(flags(), environ)
    assert settings_from(flags(), environ | {"CALLSCRIBE_TOKEN_SECRET": "x" * 32}).token_secret == "x" * 32


@pytest.mark.parametrize(
    ("argv", "environ", "url"),
    [
        ((), {}, "http://127.0.0.1:5000/healthz"),
        ((), {"PROXY_URL": "0.0.0.0:8080"}, "http://127.0.0.1:8080/healthz"),
        ((), {"PROXY_URL": "[::]:8080"}, "http://127.0.0.1:8080/healthz"),
        ((), {"PROXY_URL": "[::1]:8080"}, "http://[::1]:8080/healthz"),
        ((), {"PROXY_URL": "calls.internal:443", "CERT_PEM": "cert.pem"}, "https://calls.internal:443/healthz"),
        (("--listen", "10.0.0.5:5001", "--cert", "c.pem"), {"PROXY_URL": "0.0.0.0:1"}, "https://10.0.0.5:5001/healthz"),
    ],
)
def test_the_health_check_url_follows_listen_and_tls(argv: tuple[str, ...], environ: dict[str, str], url: str) -> None:
    assert health_url(flags(*argv), environ) == url


def test_the_health_check_needs_a_valid_address() -> None:
    with pytest.raises(ConfigError, match="PROXY_URL must be host:port"):
        health_url(flags("--listen", "localhost"), {})
