"""Correlation ids: tie every request a store sends to the run that caused it.

A central manager keeps its own audit log (Vault's audit devices, CloudTrail).
To join that log with runlease's, every HTTP request the Vault store sends
carries ``X-Correlation-ID: <id>`` where the id is derived from the run
identity (orchestrator, pipeline, run, task, try, map index). The derivation
is a hash, so the header is short, ASCII, and the same for every request of
one task try, and anyone holding a runlease audit event (which records those
fields) can recompute it with :func:`correlation_id`.

Why a context variable instead of a parameter: the :class:`SecretStore`
protocol deliberately knows nothing about identities (one store object serves
every run of a process, and the rotation-aware cache calls it), so passing an
identity through ``put/get/resolve`` would change the protocol of every store.
The broker is the one place that knows who is asking; it binds the identity
around its public methods (:func:`correlated`), and an adapter that talks
HTTP reads :func:`current` when it builds each request. A ``ContextVar`` is
per thread and per asyncio task, so concurrent leases in one process never
see each other's id. Requests made outside any broker call (``runlease ls``,
a probe at init) carry a per-process id instead, so they still group.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from runlease.models import RunIdentity

HEADER = "X-Correlation-ID"

_current: ContextVar[str | None] = ContextVar("runlease_correlation_id", default=None)
_process: tuple[int, str] | None = None

F = TypeVar("F", bound=Callable[..., Any])


def correlation_id(identity: RunIdentity) -> str:
    """The id for one task try: ``rl-`` plus 32 hex digits of a SHA-256 over the run fields."""
    fields = (
        identity.orchestrator,
        identity.pipeline,
        identity.run_id or "",
        identity.task_id or "",
        "" if identity.try_number is None else str(identity.try_number),
        "" if identity.map_index is None else str(identity.map_index),
    )
    digest = hashlib.sha256("\x1f".join(("runlease-correlation-v1", *fields)).encode()).hexdigest()
    return "rl-" + digest[:32]


def process_id() -> str:
    """A random id for this process (re-drawn after fork), used when no run is bound."""
    global _process
    pid = os.getpid()
    if _process is None or _process[0] != pid:
        _process = (pid, "rl-process-" + uuid.uuid4().hex[:20])
    return _process[1]


def current() -> str:
    """The id to send with a request made right now."""
    return _current.get() or process_id()


@contextmanager
def bound(identity: RunIdentity | None) -> Iterator[str]:
    """Bind ``identity``'s id for the duration of the block (no-op binding for ``None``)."""
    if identity is None:
        yield current()
        return
    cid = correlation_id(identity)
    token = _current.set(cid)
    try:
        yield cid
    finally:
        _current.reset(token)


def correlated(method: F) -> F:
    """Decorate a broker method whose ``identity`` argument names the run behind its store calls."""
    # Where ``identity`` sits among the positional parameters, found once: binding the
    # whole signature on every call cost more than the rest of a cached lookup.
    names = list(inspect.signature(method).parameters)
    position = names.index("identity") if "identity" in names else None

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        identity = kwargs.get("identity")
        if identity is None and position is not None and position < len(args):
            identity = args[position]
        with bound(identity if isinstance(identity, RunIdentity) else None):
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
