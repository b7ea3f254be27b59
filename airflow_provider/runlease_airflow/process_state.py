"""One opened runlease runtime (and its lease cache) per settings, per process.

Why process-wide: Airflow constructs secrets backends more than once per
process -- the worker chain is memoised (``airflow/sdk/configuration.py``
``ensure_secrets_loaded``) but ``conf._get_config_value_from_secret_backend``
builds a fresh backend for every ``*_secret`` config lookup -- and the
revocation listener has no handle on any backend instance at all. Sharing the
runtime keeps construction cheap, lets every instance see the same lease
cache, and lets the listener find every runtime this process issued leases
from.

Why fork-aware: the task supervisor builds its backends and *then* forks the
task process (``airflow/sdk/execution_time/supervisor.py``: ``supervise`` calls
``ensure_secrets_backend_loaded`` before ``ActivitySubprocess.start``). A
SQLite connection must not be used across ``fork``, so the child drops the
inherited registry and opens its own. The inherited objects are parked, not
closed: closing the parent's connection from the child could run SQLite's
close-time WAL checkpoint on the parent's behalf.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings

from runlease_airflow.lease_cache import LeaseCache


@dataclass
class ProcessState:
    """What one settings fingerprint shares inside one process."""

    runtime: Runtime
    leases: LeaseCache = field(default_factory=LeaseCache)


_lock = threading.Lock()
_states: dict[str, ProcessState] = {}
_parked: list[Any] = []  # inherited across fork: kept alive, never used or closed


def fingerprint(settings: Settings) -> str:
    """A key that tells settings apart without holding the master key itself."""
    doc = settings.model_dump(mode="json", exclude={"master_key"})
    master = settings.master_key.get_secret_value() if settings.master_key is not None else ""
    doc["master_key_sha256"] = hashlib.sha256(master.encode()).hexdigest() if master else None
    return repr(sorted(doc.items()))


def state_for(settings: Settings) -> ProcessState:
    """The shared state for ``settings``, opening the runtime on first use (errors propagate)."""
    key = fingerprint(settings)
    state = _states.get(key)
    if state is not None:
        return state
    with _lock:
        state = _states.get(key)
        if state is None:
            state = ProcessState(runtime=open_runtime(settings))
            _states[key] = state
        return state


def opened_states() -> list[ProcessState]:
    """Every runtime opened in this process (the listener revokes through these)."""
    with _lock:
        return list(_states.values())


def _after_fork_in_child() -> None:
    global _lock
    _parked.append(dict(_states))
    _states.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
