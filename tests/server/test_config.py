"""Server settings read from flags and an environment; where the health check finds the server."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from callscribe.server.config import ConfigError, settings_from
from callscribe.server.options import add_arguments
from callscribe.server.run_file import health_url, read_run_file, remove_run_file, write_run_file

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


@pytest.mark.parametrize("key", ["secret\u201d", "secret\n"])
def test_the_deepgram_key_must_be_printable_ascii(key: str) -> None:
    # It goes into HTTP headers (Deepgram's live STT and Aura), which cannot carry it.
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY has a character that is not printable ASCII") as raised:
        settings_from(flags(), {"DEEPGRAM_API_KEY": key})
    assert "secret" not in str(raised.value)


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


def test_the_health_check_follows_the_run_file_of_a_running_server(tmp_path: Path) -> None:
    """Docker runs the health check with the image's environment only: flags given to the server
    after the image name never reach it, but the addresses the server wrote to its run file do."""
    run_file = str(tmp_path / "serve.json")
    environ = {"PROXY_URL": "0.0.0.0:5000", "CALLSCRIBE_RUN_FILE": run_file}
    assert health_url(flags(), environ) == "http://127.0.0.1:5000/healthz"  # no server wrote it yet
    write_run_file(run_file, ["https://0.0.0.0:8443", "https://[::]:8443"])
    assert read_run_file(run_file) == ["https://0.0.0.0:8443", "https://[::]:8443"]
    assert health_url(flags(), environ) == "https://127.0.0.1:8443/healthz"
    assert health_url(flags("--run-file", run_file), {}) == "https://127.0.0.1:8443/healthz"
    # Flags given to the health check itself are what it is asked.
    assert health_url(flags("--listen", "127.0.0.1:6000"), environ) == "http://127.0.0.1:6000/healthz"
    remove_run_file(run_file)
    assert not (tmp_path / "serve.json").exists()


def test_a_run_file_that_is_not_one_is_ignored(tmp_path: Path) -> None:
    for text in ("", "{", "[]", '{"urls": "http://x:1"}', '{"urls": [1, "nothing"]}'):
        (tmp_path / "serve.json").write_text(text)
        assert read_run_file(str(tmp_path / "serve.json")) == []
    assert read_run_file(str(tmp_path / "missing.json")) == []


def test_a_run_file_is_removed_only_by_the_server_that_wrote_it(tmp_path: Path) -> None:
    run_file = tmp_path / "serve.json"
    run_file.write_text(json.dumps({"urls": ["http://127.0.0.1:1"], "pid": os.getpid() + 1}))
    remove_run_file(str(run_file))
    assert run_file.exists()  # another server's, written since


# -- the call store and webhooks ---------------------------------------------------------------


def test_the_store_is_a_file_in_the_data_directory_unless_told_otherwise() -> None:
    key = {"DEEPGRAM_API_KEY": "k"}
    assert settings_from(flags(), key).store.location == "data/callscribe.db"
    assert settings_from(flags(), key | {"CALLSCRIBE_DATA_DIR": "/data"}).store.location == "/data/callscribe.db"
    assert settings_from(flags("--data-dir", "/srv"), key).store.location == "/srv/callscribe.db"
    assert settings_from(flags("--store", "/x/calls.db"), key | {"CALLSCRIBE_DATA_DIR": "/data"}).store.location == (
        "/x/calls.db"
    )
    assert settings_from(flags(), key | {"CALLSCRIBE_STORE": "None"}).store.location is None
    url = "postgresql://calls:pw@db.internal/calls"
    assert settings_from(flags("--store", url), key).store.location == url


def test_store_and_webhook_settings() -> None:
    settings = settings_from(
        flags("--webhook-url", "https://a.example/hook", "--webhook-url", "http://b.example:8080/in"),
        {
            "DEEPGRAM_API_KEY": "k",
            "CALLSCRIBE_WEBHOOK_URL": "https://ignored.example/",  # the flags win
            "CALLSCRIBE_WEBHOOK_SECRET": "s",
            "CALLSCRIBE_WEBHOOK_RETRY_FIRST": "2",
            "CALLSCRIBE_WEBHOOK_RETRY_MAX": "60",
            "CALLSCRIBE_WEBHOOK_RETRY_FOR": "0.5",
            "CALLSCRIBE_STORE_QUEUE": "500",
            "CALLSCRIBE_RETENTION_DAYS": "30",
            "CALLSCRIBE_SPEAKER_LABELS": "Customer,Agent",
        },
    ).store
    assert settings.webhook_urls == ("https://a.example/hook", "http://b.example:8080/in")
    assert settings.webhook_secret == "s" and settings.queue_size == 500 and settings.retention_days == 30
    assert (settings.webhook_retry.first_s, settings.webhook_retry.max_delay_s) == (2, 60)
    assert settings.webhook_retry.give_up_after_s == 1800
    assert (settings.speaker_labels.caller, settings.speaker_labels.other_party) == ("Customer", "Agent")
    several = settings_from(flags(), {"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WEBHOOK_URL": "http://a/1, http://b/2"})
    assert several.store.webhook_urls == ("http://a/1", "http://b/2")


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CALLSCRIBE_STORE": "mysql://db/calls"}, "CALLSCRIBE_STORE must be a file path, a postgresql:// URL or none"),
        ({"CALLSCRIBE_WEBHOOK_URL": "ftp://x/y"}, "CALLSCRIBE_WEBHOOK_URL: webhook URL 'ftp://x/y' must be an http"),
        (  # urlsplit takes it, the HTTP client does not
            {"CALLSCRIBE_WEBHOOK_URL": "https://hooks.ex\u00e4mple..com/calls"},
            "CALLSCRIBE_WEBHOOK_URL: webhook URL 'https://hooks.ex\u00e4mple..com/calls' is not a valid URL",
        ),
        (
            {"CALLSCRIBE_WEBHOOK_URL": "http://x/y", "CALLSCRIBE_STORE": "none"},
            "CALLSCRIBE_WEBHOOK_URL needs a store",
        ),
        ({"CALLSCRIBE_SPEAKER_LABELS": "Caller"}, "CALLSCRIBE_SPEAKER_LABELS: speaker labels must be two names"),
        ({"CALLSCRIBE_STORE_QUEUE": "0"}, "CALLSCRIBE_STORE_QUEUE must be between 10 and"),
        ({"CALLSCRIBE_RETENTION_DAYS": "-1"}, "CALLSCRIBE_RETENTION_DAYS must be between 0 and"),
        ({"CALLSCRIBE_WEBHOOK_RETRY_MAX": "0.5"}, "CALLSCRIBE_WEBHOOK_RETRY_MAX must be between 1 and"),
        ({"CALLSCRIBE_WEBHOOK_RETRY_FOR": "0"}, "CALLSCRIBE_WEBHOOK_RETRY_FOR must be between"),
    ],
)
def test_bad_store_settings_are_one_line(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        settings_from(flags(), {"DEEPGRAM_API_KEY": "k"} | environ)


@pytest.mark.parametrize("environ", [{"CALLSCRIBE_WORKERS": "²"}, {"PROXY_URL": "127.0.0.1:50²"}])
def test_a_superscript_digit_is_a_config_error(environ: dict[str, str]) -> None:  # str.isdigit takes it, int does not
    with pytest.raises(ConfigError):
        settings_from(argparse.Namespace(), {"DEEPGRAM_API_KEY": "k", **environ})


def test_a_token_secret_that_is_not_utf8_is_taken_not_a_traceback() -> None:
    # os.environ gives a variable's bytes that are not UTF-8 as surrogates (surrogateescape).
    environ = {"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_TOKEN_SECRET": os.fsdecode(b"\xff" * 31)}
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        settings_from(flags(), environ)
    environ["CALLSCRIBE_TOKEN_SECRET"] = os.fsdecode(b"\xff" * 32)
    assert settings_from(flags(), environ).token_secret == os.fsdecode(b"\xff" * 32)
