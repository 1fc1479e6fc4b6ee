"""Where a running server listens: the run file `serve` writes (`CALLSCRIBE_RUN_FILE`) and removes,
and the `/healthz` address `callscribe healthcheck` derives from it or from the settings."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Mapping

from callscribe.server.config import parse_host_port
from callscribe.server.options import option_values


def health_url(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """Where this machine reaches the `/healthz` of the server these settings describe.

    `--listen`/`--cert` given to the health check itself win; then the run file of a running
    server (`CALLSCRIBE_RUN_FILE`: what it really listens on, whatever flags it was given); then
    `PROXY_URL` and `CERT_PEM`. https when a certificate is configured; a wildcard address
    (`0.0.0.0`, `[::]`) is reached at 127.0.0.1, which a dual-stack `[::]` also accepts."""
    values = option_values(args, os.environ if environ is None else environ)
    run_file = values["CALLSCRIBE_RUN_FILE"]
    if run_file and getattr(args, "listen", None) is None and getattr(args, "cert", None) is None:
        listening = read_run_file(run_file)
        if listening:
            scheme, _, address = listening[0].partition("://")
            return _health_url("https" if scheme == "https" else "http", address)
    return _health_url("https" if values["CERT_PEM"] else "http", values["PROXY_URL"] or "")


def _health_url(scheme: str, address: str) -> str:
    host, port = parse_host_port(address, "PROXY_URL")
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}/healthz"


def write_run_file(path: str, urls: list[str]) -> None:
    """Say where this server listens (`{"urls": [...], "pid": N}`), atomically; OSError if it cannot."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump({"urls": urls, "pid": os.getpid()}, f)
    os.replace(temporary, path)


def read_run_file(path: str) -> list[str]:
    """The URLs a running server wrote to `path`; none if there is no such file or it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return []
    urls = data.get("urls") if isinstance(data, dict) else None
    return [url for url in urls if isinstance(url, str) and "://" in url] if isinstance(urls, list) else []


def remove_run_file(path: str) -> None:
    """The server stops: its run file goes (unless another server has written its own since)."""
    if _run_file_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            os.remove(path)


def _run_file_pid(path: str) -> int | None:
    try:
        with open(path, encoding="utf-8") as f:
            pid = json.load(f).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None
