"""The core, the CLI, the remote client and runlease_kfp import without the server's libraries:
a component image needs only ``runlease[kfp]`` (urllib3), never FastAPI, uvicorn or PyJWT."""

from __future__ import annotations

import subprocess
import sys

SERVER_LIBS = ("fastapi", "starlette", "uvicorn", "jwt", "prometheus_client")


def loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint(','.join(m for m in {SERVER_LIBS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_clients_do_not_import_the_server_stack() -> None:
    assert loaded_after("import runlease, runlease.runtime, runlease.cli.main, runlease.remote.runtime, "
                        "runlease.remote.broker, runlease_kfp, runlease_kfp.leasing, runlease_kfp.run_cleanup") == []


def test_opening_a_remote_runtime_does_not_either(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    assert loaded_after(
        "from runlease.runtime import open_runtime\nfrom runlease.settings import Settings\n"
        f"rt = open_runtime(Settings(server='http://127.0.0.1:1', token_file={str(token)!r}))\n"
        "assert type(rt).__name__.endswith('RemoteRuntime') or 'Remote' in type(rt).__mro__[1].__name__"
    ) == []
