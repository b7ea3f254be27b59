"""Start a real ``runlease serve`` process on 127.0.0.1 and a free port; stop it by its pid.

The server runs ``python -m runlease serve`` with this checkout on
PYTHONPATH (the root conftest exports it), its own home and key in its
environment, and nothing of the caller's RUNLEASE_* settings. Waiting for
start-up polls ``/healthz`` for a bounded time; stopping sends SIGTERM, then
SIGKILL after a grace period, so a test never leaves a server behind.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from support.postgres import free_port

START_TIMEOUT_S = 60


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log: Path
    #: CA of the server's certificate when it serves HTTPS (``--tls-cert``), else None.
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def start_server(home: Path, env: dict[str, str], log: Path, *args: str,
                 port: int | None = None, ca_file: Path | None = None) -> ServerProcess:
    """Start ``runlease serve`` with ``args`` (after --host/--port) and wait until it answers
    (over HTTPS, trusting ``ca_file``, when given)."""
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    full_env.update(env)
    full_env["RUNLEASE_HOME"] = str(home)
    handle = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "runlease", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=full_env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )
    handle.close()
    server = ServerProcess(proc, port, log, ca_file)
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"runlease serve exited with {proc.returncode}: {server.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=2, context=context) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"runlease serve did not answer in {START_TIMEOUT_S} s: {server.log_text()[-3000:]}")
        time.sleep(0.1)


def stop_server(server: ServerProcess, grace: float = 15.0) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=grace)
