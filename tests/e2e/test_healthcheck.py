"""The Docker image's health check, run the way Docker runs it: the server is the ENTRYPOINT with
the flags given after the image name, the health check is the HEALTHCHECK command with the image's
environment only. (No Docker daemon in the tests: the Dockerfile's own lines are run.)"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trustme

from callscribe.server.options import OPTIONS
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def runtime_stage() -> str:
    return DOCKERFILE.rsplit("\nFROM ", 1)[1]


def image_environment(run_file: Path, data_dir: Path) -> dict[str, str]:
    """The runtime stage's ENV, its run file and data directory (the VOLUME) moved into the test's
    folder (tests run side by side)."""
    declared = re.search(r"^ENV (.*?)(?=^\S)", runtime_stage(), re.S | re.M)
    assert declared is not None
    pairs = dict(item.split("=", 1) for item in shlex.split(declared[1].replace("\\\n", " ")))
    assert Path(pairs["CALLSCRIBE_RUN_FILE"]).is_absolute()
    pairs["CALLSCRIBE_RUN_FILE"] = str(run_file)
    assert re.search(rf"^VOLUME {pairs['CALLSCRIBE_DATA_DIR']}$", runtime_stage(), re.M)
    pairs["CALLSCRIBE_DATA_DIR"] = str(data_dir)
    pairs["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's callscribe
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEEPGRAM_", "CERT_", "KEY_", "PROXY_", "CALLSCRIBE_"))
    }
    return base | pairs


def exec_form(instruction: str) -> list[str]:
    line = re.search(rf"^{instruction} .*?(\[.*\])\s*$", runtime_stage(), re.M)
    assert line is not None, instruction
    return json.loads(line[1])


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    issued = trustme.CA().issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")


async def test_the_health_check_follows_flags_given_after_the_image_name(
    tmp_path: Path, certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    run_file = tmp_path / "callscribe-serve.json"
    env = image_environment(run_file, tmp_path / "data") | {
        "DEEPGRAM_API_KEY": "k"
    }  # docker run -e DEEPGRAM_API_KEY=...
    port = free_port()
    entrypoint, healthcheck = exec_form("ENTRYPOINT"), exec_form("HEALTHCHECK")
    assert entrypoint == ["callscribe", "serve"] and healthcheck == ["callscribe", "healthcheck"]
    server = await trio.lowlevel.open_process(
        [*entrypoint, "--listen", f"127.0.0.1:{port}", "--cert", cert, "--key", key], env=env, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(20):
            while not run_file.exists():
                await trio.sleep(0.05)
        check = await trio.run_process(healthcheck, env=env, capture_stdout=True, capture_stderr=True, check=False)
        assert check.returncode == 0, check.stderr
        assert json.loads(check.stdout)["status"] == "ok"
        # Without the run file the check knows only the image's PROXY_URL, not the flags: unhealthy.
        without = {k: v for k, v in env.items() if k != "CALLSCRIBE_RUN_FILE"}
        blind = await trio.run_process(healthcheck, env=without, capture_stdout=True, capture_stderr=True, check=False)
        assert blind.returncode == 1 and b"http://127.0.0.1:5000/healthz" in blind.stderr
        server.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await server.wait() == 0
        assert not run_file.exists()  # gone with the server
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()


def test_a_run_file_that_cannot_be_written_stops_start_up_with_one_line(tmp_path: Path) -> None:
    env = image_environment(tmp_path / "no" / "such" / "dir" / "serve.json", tmp_path / "data") | {
        "DEEPGRAM_API_KEY": "k"
    }
    result = subprocess.run(
        [sys.executable, "-m", "callscribe", "serve", "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"callscribe: CALLSCRIBE_RUN_FILE: cannot write {tmp_path}/no/such/dir/serve.json: ")
    assert "Traceback" not in result.stderr


def test_docker_stop_gives_live_calls_their_whole_grace() -> None:
    """`docker stop` waits 10 s by default, as long as the shutdown grace: the README's docker run
    gives more."""
    readme = (ROOT / "README.md").read_text()
    stop_timeout = re.search(r"docker run .*--stop-timeout (\d+)", readme)
    grace = next(option.default for option in OPTIONS if option.env == "CALLSCRIBE_SHUTDOWN_GRACE")
    assert stop_timeout is not None and grace is not None
    assert int(stop_timeout[1]) >= float(grace) + 5
    assert "STOPSIGNAL SIGTERM" in runtime_stage()
