"""The command line: help, one-line configuration errors with status 2, and a real server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from callscribe.server.config import OPTIONS
from conftest import free_port

PYTHON = sys.executable


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CERT_", "KEY_", "PROXY_", "CALLSCRIBE_"))
    }
    return subprocess.run(
        [PYTHON, "-m", "callscribe", *args], env=base | (env or {}), capture_output=True, text=True, timeout=30
    )


def test_help_documents_every_option_and_its_variable() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in OPTIONS:
        assert option.flag in text and f"env {option.env}" in text


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    (folder / "garbage.pem").write_text("not a certificate\n")
    return str(folder / "cert.pem"), str(folder / "key.pem")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DEEPGRAM_API_KEY (or --deepgram-api-key) is required"),
        ({"DEEPGRAM_API_KEY": "k", "CERT_PEM": "{cert}"}, "CERT_PEM is set but KEY_PEM is not"),
        ({"DEEPGRAM_API_KEY": "k", "KEY_PEM": "{key}"}, "KEY_PEM is set but CERT_PEM is not"),
        (
            {"DEEPGRAM_API_KEY": "k", "CERT_PEM": "/no/such.pem", "KEY_PEM": "{key}"},
            "CERT_PEM: cannot read /no/such.pem",
        ),
        ({"DEEPGRAM_API_KEY": "k", "CERT_PEM": "{garbage}", "KEY_PEM": "{key}"}, "CERT_PEM/KEY_PEM: cannot load"),
        ({"DEEPGRAM_API_KEY": "k", "PROXY_URL": "localhost"}, "PROXY_URL must be host:port"),
        ({"DEEPGRAM_API_KEY": "k", "PROXY_URL": "localhost:99999"}, "PROXY_URL must be host:port"),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WINDOW_MS": "400"}, "CALLSCRIBE_WINDOW_MS must be between 20 and 250"),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WINDOW_MS": "fast"}, "CALLSCRIBE_WINDOW_MS must be a number"),
        (
            {"DEEPGRAM_API_KEY": "k", "DEEPGRAM_URL": "https://api.deepgram.com"},
            "DEEPGRAM_URL: Deepgram URL must be ws://",
        ),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_LOG_LEVEL": "chatty"}, "CALLSCRIBE_LOG_LEVEL must be"),
    ],
)
def test_bad_configuration_is_one_line_and_status_2(
    env: dict[str, str], message: str, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    garbage = str(Path(cert).parent / "garbage.pem")
    env = {k: v.format(cert=cert, key=key, garbage=garbage) for k, v in env.items()}
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_flags_override_the_environment() -> None:
    result = run_cli("serve", "--window-ms", "999", env={"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WINDOW_MS": "100"})
    assert result.returncode == 2 and "not 999" in result.stderr


async def test_a_real_server_process_serves_health_and_exits_0_on_sigterm() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CERT_", "KEY_", "CALLSCRIBE_"))}
    env |= {"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{port}"}
    process = await trio.lowlevel.open_process([PYTHON, "-m", "callscribe", "serve"], env=env, stderr=subprocess.PIPE)
    try:
        async with httpx.AsyncClient() as http:
            with trio.fail_after(15):
                while True:
                    try:
                        response = await http.get(f"http://127.0.0.1:{port}/healthz")
                        break
                    except httpx.ConnectError:
                        await trio.sleep(0.05)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "active_calls": 0, "subscribers": 0, "games": 0}
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
        log = (await process.stderr.receive_some(1 << 16)).decode()  # type: ignore[union-attr]
        assert "received SIGTERM" in log and "callscribe stopped" in log
        assert "TWILIO_AUTH_TOKEN is not set" in log and "anyone can read every transcript" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_readme_starts_with_the_two_commands_and_documents_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "scripts/serve" in first_block and "scripts/test" in first_block
    for option in OPTIONS:
        assert f"| `{option.flag}` | `{option.env}` |" in readme
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert "scripts/test" in ci
