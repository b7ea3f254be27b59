"""Plain helpers for the core tests (a uniquely named module: several test folders
have a conftest.py, so ``from conftest import`` would pick whichever was imported first)."""

from __future__ import annotations

import os
import subprocess
import sys
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
