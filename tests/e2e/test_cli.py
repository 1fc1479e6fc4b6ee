"""The command line: help, one-line configuration and start-up errors with status 2, a real server
process, the health check, token minting, and subcommands that import only what they use."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest
import trio
import trustme

from callscribe.exception_groups import leaves
from callscribe.server import listener
from callscribe.server.call_settings import CallSettings
from callscribe.server.config import ServerSettings
from callscribe.server.hub import InMemoryHub
from callscribe.server.options import OPTIONS
from callscribe.server.serve import StartupError, serve
from callscribe.testing.fake_deepgram import FakeDeepgram
from conftest import free_port, start_server
from redis_server import RedisServer, needs_redis

PYTHON = sys.executable
TOKEN_SECRET = "0123456789abcdef0123456789abcdef"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) ")


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without callscribe's settings (and with no call store: nothing
    is written in the working directory), plus `env`."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CERT_", "KEY_", "PROXY_", "CALLSCRIBE_"))
    }
    return base | {"CALLSCRIBE_STORE": "none"} | (env or {})


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "callscribe", *args], env=clean_env(env), capture_output=True, text=True, timeout=30
    )


def assert_one_error_line(stderr: str, message: str) -> None:
    """Log lines below ERROR may come first; then exactly one line, the error, and no traceback."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("callscribe: ") and message in lines[-1], stderr
    assert all(LOG_LINE.match(line) for line in lines[:-1]), stderr


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
        ({"DEEPGRAM_API_KEY": "k", "CERT_PEM": "{folder}", "KEY_PEM": "{key}"}, "CERT_PEM: cannot read"),
        (
            {"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_TOKEN_SECRET": "short"},
            "CALLSCRIBE_TOKEN_SECRET must be at least 32 bytes long",
        ),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WORKERS": "2"}, "through Redis: set CALLSCRIBE_REDIS_URL"),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WORKERS": "many"}, "CALLSCRIBE_WORKERS must be a number from 1 to 64"),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WORKERS": "0"}, "CALLSCRIBE_WORKERS must be a number from 1 to 64"),
        ({"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_REDIS_LEASE": "0.1"}, "CALLSCRIBE_REDIS_LEASE must be between 1"),
    ],
)
def test_bad_configuration_is_one_line_and_status_2(
    env: dict[str, str], message: str, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    garbage = str(Path(cert).parent / "garbage.pem")
    env = {k: v.format(cert=cert, key=key, garbage=garbage, folder=Path(cert).parent) for k, v in env.items()}
    result = run_cli("serve", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_flags_override_the_environment() -> None:
    result = run_cli("serve", "--window-ms", "999", env={"DEEPGRAM_API_KEY": "k", "CALLSCRIBE_WINDOW_MS": "100"})
    assert result.returncode == 2 and "not 999" in result.stderr


async def health_once_up(port: int) -> httpx.Response:
    """The server's /healthz on `port`, once it listens (within 15 s)."""
    async with httpx.AsyncClient() as http:
        with trio.fail_after(15):
            while True:
                try:
                    return await http.get(f"http://127.0.0.1:{port}/healthz")
                except httpx.ConnectError:
                    await trio.sleep(0.05)


async def test_a_real_server_process_serves_health_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CERT_", "KEY_", "CALLSCRIBE_"))}
    env |= {"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{port}", "CALLSCRIBE_DATA_DIR": str(tmp_path / "data")}
    process = await trio.lowlevel.open_process([PYTHON, "-m", "callscribe", "serve"], env=env, stderr=subprocess.PIPE)
    try:
        response = await health_once_up(port)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "active_calls": 0, "subscribers": 0, "games": 0}
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
        log = (await process.stderr.receive_some(1 << 16)).decode()  # type: ignore[union-attr]
        assert "received SIGTERM" in log and "callscribe stopped" in log
        assert "TWILIO_AUTH_TOKEN is not set" in log and "anyone can read every transcript" in log
        assert (
            f"call store: sqlite {tmp_path / 'data' / 'callscribe.db'}" in log
        )  # on by default, in the data directory
        assert (tmp_path / "data" / "callscribe.db").is_file()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- start-up failures -------------------------------------------------------------------------


def _nonlocal_bind_allowed() -> bool:
    try:
        return Path("/proc/sys/net/ipv4/ip_nonlocal_bind").read_text().strip() == "1"
    except OSError:
        return False


def test_an_address_in_use_is_one_line_and_status_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", env={"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{port}"})
    assert result.returncode == 2
    assert_one_error_line(result.stderr, f"cannot listen on 127.0.0.1:{port}: Address already in use")


@pytest.mark.skipif(_nonlocal_bind_allowed(), reason="net.ipv4.ip_nonlocal_bind lets any address be bound")
def test_an_address_not_of_this_machine_is_one_line_and_status_2() -> None:
    result = run_cli("serve", "--listen", f"192.0.2.1:{free_port()}", env={"DEEPGRAM_API_KEY": "k"})  # TEST-NET-1
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "cannot listen on 192.0.2.1:")
    assert "Cannot assign requested address" in result.stderr


def test_a_store_in_use_by_another_server_is_one_line_and_status_2(tmp_path: Path) -> None:
    from callscribe.server.store import open_engine

    running = open_engine(str(tmp_path / "callscribe.db"))
    running.open()  # as a server does: it holds the file's lock
    try:
        env = {"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{free_port()}", "CALLSCRIBE_DATA_DIR": str(tmp_path)}
        result = run_cli("serve", env=env | {"CALLSCRIBE_STORE": ""})
    finally:
        running.close()
    assert result.returncode == 2
    assert_one_error_line(
        result.stderr, f"the store {tmp_path / 'callscribe.db'} is in use by another callscribe server"
    )


def test_redis_not_answering_at_start_up_is_one_line_and_status_2() -> None:
    port = free_port()
    env = {"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{free_port()}"}
    result = run_cli("serve", env=env | {"CALLSCRIBE_REDIS_URL": f"redis://user:password@127.0.0.1:{port}/0"})
    assert result.returncode == 2
    assert_one_error_line(result.stderr, f"cannot reach Redis at 127.0.0.1:{port}/0: ")
    assert "password" not in result.stderr


def test_workers_whose_address_or_redis_fails_are_one_line_and_status_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{port}", "CALLSCRIBE_REDIS_URL": "redis://127.0.0.1:1"}
        result = run_cli("serve", "--workers", "2", env=env)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, f"cannot listen on 127.0.0.1:{port}: ")
    env["PROXY_URL"] = f"127.0.0.1:{free_port()}"
    result = run_cli("serve", "--workers=auto", env=env | {"CALLSCRIBE_WORKERS": "1"})  # the flag wins
    if len(os.sched_getaffinity(0)) > 1:
        assert result.returncode == 2
        assert_one_error_line(result.stderr, "cannot reach Redis at redis://127.0.0.1:1")


@needs_redis
async def test_a_worker_that_cannot_start_stops_them_all_with_its_one_line_and_status_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from callscribe.server.store import open_engine

    running = open_engine(str(tmp_path / "callscribe.db"))
    running.open()  # another server holds the store the workers would share
    try:
        env = {
            "DEEPGRAM_API_KEY": "k",
            "PROXY_URL": f"127.0.0.1:{free_port()}",
            "CALLSCRIBE_REDIS_URL": redis_server.url,
            "CALLSCRIBE_DATA_DIR": str(tmp_path),
            "CALLSCRIBE_STORE": "",  # the default store, in the data directory
        }
        result = await trio.to_thread.run_sync(lambda: run_cli("serve", "--workers", "2", env=env))
    finally:
        running.close()
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "is in use by another callscribe server")


def _settings() -> ServerSettings:
    return ServerSettings(
        host="127.0.0.1",
        port=0,
        call=CallSettings(deepgram_url="ws://127.0.0.1:9/v1/listen", deepgram_api_key="k"),
        speech="espeak",
    )


@pytest.mark.parametrize(("name", "reason"), [("missing.pem", "No such file"), ("garbage.pem", "PEM lib")])
async def test_a_certificate_that_does_not_load_is_a_startup_error(
    certificate: tuple[str, str], name: str, reason: str
) -> None:
    cert, key = certificate  # settings_from checks the files; settings built otherwise are checked too
    settings = dataclasses.replace(_settings(), certfile=str(Path(cert).parent / name), keyfile=key)
    with pytest.raises(StartupError, match=f"CERT_PEM/KEY_PEM: cannot load the certificate and key: .*{reason}"):
        await serve(settings)


class HubThatCannotStart(InMemoryHub):
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise RuntimeError("the hub's store is gone")


@pytest.mark.logged_exceptions_expected  # Quart logs the failure with its traceback
async def test_the_app_failing_to_start_is_a_startup_error() -> None:
    with pytest.raises(StartupError) as raised, trio.fail_after(10):
        await serve(_settings(), hub=HubThatCannotStart())
    assert str(raised.value) == "the app failed to start: RuntimeError: the hub's store is gone"


async def test_failures_once_listening_are_not_startup_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    async def listen_then_fail(*args: object, task_status: trio.TaskStatus[list[str]], **kwargs: object) -> None:
        task_status.started(["http://127.0.0.1:1"])
        await trio.lowlevel.checkpoint()
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(listener, "serve", listen_then_fail)
    with pytest.raises(BaseExceptionGroup) as raised, trio.fail_after(10):
        await serve(_settings())
    assert [type(error) for error in leaves(raised.value)] == [OSError]


# -- healthcheck --------------------------------------------------------------------------------


async def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(20):
        return await trio.run_process(
            [PYTHON, "-m", "callscribe", "healthcheck", *args],
            env=clean_env(env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_healthcheck_of_a_running_server(nursery: trio.Nursery, fake_deepgram: FakeDeepgram) -> None:
    server = await start_server(nursery, fake_deepgram)
    port = server.http_url.rsplit(":", 1)[1]
    for args, env in [((), {"PROXY_URL": f"127.0.0.1:{port}"}), (("--listen", f"0.0.0.0:{port}"), {})]:
        result = await healthcheck(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "ok" and result.stderr == b""
    server.stop.set()


async def test_healthcheck_speaks_tls_without_checking_the_certificate(
    nursery: trio.Nursery, fake_deepgram: FakeDeepgram, certificate: tuple[str, str]
) -> None:
    cert, key = certificate  # issued by a CA that nothing trusts
    server = await start_server(nursery, fake_deepgram, certfile=cert, keyfile=key)
    port = server.http_url.rsplit(":", 1)[1]
    result = await healthcheck(env={"PROXY_URL": f"[::]:{port}", "CERT_PEM": cert, "KEY_PEM": key})
    assert result.returncode == 0, result.stderr
    assert (await healthcheck("--listen", f"127.0.0.1:{port}")).returncode == 1  # plain http to a TLS port
    server.stop.set()


async def test_healthcheck_of_a_closed_port_is_one_line_and_status_1() -> None:
    port = free_port()
    result = await healthcheck("--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1 and result.stdout == b""
    (line,) = result.stderr.decode().strip().splitlines()
    assert line.startswith(f"callscribe: http://127.0.0.1:{port}/healthz: ") and "refused" in line
    result = await healthcheck(env={"PROXY_URL": "nowhere"})
    assert result.returncode == 1 and "PROXY_URL must be host:port" in result.stderr.decode()


# -- token, imports ----------------------------------------------------------------------------


def test_token_mints_a_jwt_any_library_can_read() -> None:
    result = run_cli(
        "token", "--ttl", "60", "--call", "CA1", "--sub", "ops", env={"CALLSCRIBE_TOKEN_SECRET": TOKEN_SECRET}
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), TOKEN_SECRET, algorithms=["HS256"])
    assert claims["call_sid"] == "CA1" and claims["sub"] == "ops" and claims["exp"] - claims["iat"] == 60
    short = run_cli("token", env={"CALLSCRIBE_TOKEN_SECRET": "short"})
    assert short.returncode == 2 and "at least 32 bytes" in short.stderr and len(short.stderr.splitlines()) == 1


def test_a_subcommand_imports_only_its_own_modules() -> None:
    program = """
import sys
from callscribe import cli
for argv in (["--help"], ["serve", "--help"], ["healthcheck", "--help"], ["token", "--help"], ["listen", "--help"]):
    try:
        cli.main(argv)
    except SystemExit:
        pass
import callscribe.server.serve
print(sorted(m for m in sys.modules if m.startswith(("callscribe.testing", "callscribe.bench"))))
"""
    result = subprocess.run([PYTHON, "-c", program], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.splitlines()[-1] == "[]"


def test_listen_loads_no_server_framework() -> None:
    """A terminal subscriber needs trio and trio-websocket, not the server's Quart and Hypercorn."""
    program = """
import sys
from callscribe import cli
try:
    cli.main(["listen", "--help"])
except SystemExit:
    pass
print(sorted(m for m in sys.modules if m.split(".")[0] in ("quart", "quart_trio", "hypercorn", "coredis")))
"""
    result = subprocess.run([PYTHON, "-c", program], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("fake-deepgram", "--reject-status"),
        ("simulate-call", "--mulaw"),
        ("bench", "--scenario"),
        ("demo", "--game"),
        ("listen", "--all"),
    ],
)
def test_every_subcommand_still_documents_its_options(command: str, option: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0 and option in result.stdout


def test_readme_starts_with_the_two_commands_and_documents_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "scripts/serve" in first_block and "scripts/test" in first_block
    for option in OPTIONS:
        assert f"| `{option.flag}` | `{option.env}` |" in readme
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert "scripts/test" in ci


async def test_a_second_signal_during_the_drain_does_not_kill_the_server(tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches every process of the group, so a worker of `--workers N` gets
    SIGINT and then its supervisor's SIGTERM (systemd's KillMode=control-group does the same): the
    drain must go on, not end with the second signal's default action."""
    port = free_port()
    env = clean_env({"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{port}"})
    process = await trio.lowlevel.open_process([PYTHON, "-m", "callscribe", "serve"], env=env, stderr=subprocess.PIPE)
    try:
        await health_once_up(port)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            status = await process.wait()
        log = (await process.stderr.receive_some(1 << 16)).decode()  # type: ignore[union-attr]
        assert status == 0, log
        assert "received SIGINT" in log and "callscribe stopped" in log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@needs_redis
async def test_an_abbreviated_workers_flag_does_not_make_the_workers_supervise(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """argparse takes `--worker 2` for `--workers 2`; the supervisor drops only the exact flag from
    its workers' command line, so a worker must not start workers of its own (a chain of processes
    that never gets ready)."""
    env = clean_env({"DEEPGRAM_API_KEY": "k", "PROXY_URL": f"127.0.0.1:{free_port()}"})
    env["CALLSCRIBE_REDIS_URL"] = redis_server.url
    log_path = tmp_path / "workers.log"
    with log_path.open("wb") as log_file:
        # Its own process group: whatever it starts is killed with it, even on this test's failure.
        process = await trio.lowlevel.open_process(
            [PYTHON, "-m", "callscribe", "serve", "--worker", "2"],
            env=env,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        with trio.move_on_after(20):
            while "2 workers listening" not in log_path.read_text() and process.returncode is None:
                await trio.sleep(0.1)
        log = log_path.read_text()
        assert "2 workers listening" in log, log
        pids = [int(pid) for pid in re.findall(r"\(pids (\d+), (\d+)\)", log)[0]]
        for pid in pids:  # a worker serves; it has no processes of its own
            children = (await trio.Path(f"/proc/{pid}/task/{pid}/children").read_text()).split()
            assert children == [], log
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "inf"])
def test_token_with_a_bad_ttl_is_one_line_and_status_2(ttl: str) -> None:
    result = run_cli("token", "--ttl", ttl, env={"CALLSCRIBE_TOKEN_SECRET": TOKEN_SECRET})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == ["callscribe: --ttl must be positive"], result.stderr
    assert result.stdout == ""
