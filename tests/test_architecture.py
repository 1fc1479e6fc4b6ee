"""The layout's contract, checked at run time in a fresh interpreter: the core imports no IO
framework (not even indirectly), and the server loads neither the fakes nor the benchmark.
(`scripts/lint` checks the same statically with import-linter; see pyproject.toml.)"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import callscribe.core

FRAMEWORKS = (
    "trio",
    "trio_websocket",
    "quart",
    "quart_trio",
    "hypercorn",
    "httpx",
    "coredis",
    "anyio",
    "h11",
    "wsproto",
)


def modules_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nimport json\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout.splitlines()[-1])


CORE_MODULES = sorted(m.name for m in pkgutil.iter_modules(callscribe.core.__path__, "callscribe.core."))


def test_the_core_has_modules() -> None:
    assert {"callscribe.core.twilio", "callscribe.core.mixer", "callscribe.core.deepgram"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_a_core_module_loads_no_io_framework(module: str) -> None:
    loaded = modules_after(f"import {module}")
    assert not [m for m in loaded if m.split(".")[0] in FRAMEWORKS]
    assert not [m for m in loaded if m.startswith(("callscribe.server", "callscribe.testing", "callscribe.bench"))]


def test_the_server_loads_neither_the_fakes_nor_the_benchmark() -> None:
    loaded = modules_after("import callscribe.server.app, callscribe.server.serve")
    assert "callscribe.server.app" in loaded
    assert not [m for m in loaded if m.startswith(("callscribe.testing", "callscribe.bench"))]


def test_the_serve_command_loads_neither_the_fakes_nor_the_benchmark() -> None:
    code = "from callscribe import cli\ntry:\n    cli.main(['serve', '--help'])\nexcept SystemExit:\n    pass"
    loaded = modules_after(code)
    assert "callscribe.server.options" in loaded
    assert not [m for m in loaded if m.startswith(("callscribe.testing", "callscribe.bench"))]


def test_the_public_face_is_small_and_cheap_to_import() -> None:
    loaded = modules_after("import callscribe")
    assert not [m for m in loaded if m.split(".")[0] in FRAMEWORKS]
    import callscribe
    from callscribe.server.config import ServerSettings

    assert callscribe.Settings is ServerSettings
    assert set(callscribe.__all__) == {"CallSettings", "Settings", "__version__", "create_app", "serve"}
    with pytest.raises(AttributeError):
        _ = callscribe.nothing_like_this
