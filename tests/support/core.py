"""Plain helpers for the core tests (a uniquely named module: several test folders
have a conftest.py, so ``from conftest import`` would pick whichever was imported first)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def conn(password: str = "s3cr3t-Passw0rd", **fields: object) -> dict:  # runlease: allow secret-assignment (test fixture)
    """A connection dict in the stored (canonical) shape."""
    base = {
        "conn_type": "postgres", "host": "db.example.com", "login": "etl", "password": password,
        "schema": "warehouse", "port": 5432, "extra": {},
    }
    base.update(fields)
    return base


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (its own runtime, its own SQLite connections)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@contextmanager
def released_together(argvs: list[list[str]], sync: Path, env: dict[str, str] | None = None,
                      ready_timeout: float = 120) -> Iterator[list[subprocess.Popen]]:
    """Start one process per argv, wait until each touched ``sync/ready-<i>``, then touch
    ``sync/go`` so they all start their work at the same moment; yields the processes.

    Contention tests need the processes to really overlap: interpreter start-up takes
    longer than the work itself. Processes still running when the block ends are killed.
    """
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ) if env is None else env) for argv in argvs]
    try:
        deadline = time.monotonic() + ready_timeout
        while len(list(sync.glob("ready-*"))) < len(procs):
            assert all(p.poll() is None for p in procs), "a process died before the start signal"
            assert time.monotonic() < deadline, "processes did not get ready"
            time.sleep(0.01)
        (sync / "go").touch()
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
