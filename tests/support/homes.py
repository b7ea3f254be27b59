"""Runtimes on throwaway homes, configured explicitly (never from the developer's RUNLEASE_* env)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runlease.models import RunIdentity
from runlease.runtime import Runtime, init_home
from runlease.settings import Settings


def make_runtime(home: Path, **settings: Any) -> Runtime:
    """A fresh, initialized home; extra keyword arguments are Settings fields (ledger, ledger_dsn, ...)."""
    rt, _ = init_home(Settings(home=home, **settings))
    return rt


def identity(run_id: str = "manual__2024-05-01T00:00:00+00:00", task_id: str = "load",
             pipeline: str = "warehouse_daily", try_number: int = 1) -> RunIdentity:
    return RunIdentity(orchestrator="airflow", pipeline=pipeline, run_id=run_id, task_id=task_id,
                       try_number=try_number, principal="svc-etl")


def raw_files(home: Path) -> bytes:
    """Every byte the local store wrote (database, WAL, SHM): what a password scan must cover."""
    return b"".join(p.read_bytes() for p in sorted(home.glob("store.db*")) if p.is_file())
