"""Mask what a task fetched through the Execution API in full, on a worker where runlease is not configured.

In API-server mode the worker has no runlease setting, so :mod:`runlease_airflow.masking`
never runs there. Airflow's own masking of a fetched secret is narrower
(``airflow/sdk/execution_time/request_handlers.py`` and ``context.py``, measured on
Airflow 3.3.2 by ``tests/airflow/test_api_server_mode.py``):

- a connection's password and its whole ``extra`` string are masked, and
  ``extra_dejson`` masks extras whose *key* looks sensitive; but the
  percent-encoded password inside ``Connection.get_uri()`` is not: a task
  logging its URI logged the password (``Ta%2F...%40pw``);
- a variable is masked only when its *key* looks sensitive
  (``mask_secret(value, key)``): ``Variable.get("tenant_a_note")`` was printed
  verbatim.

When the runlease-airflow package is installed on the worker (no setting, no
key), the runlease plugin is loaded in every task process, and its listener's
``on_starting`` hook (called by ``task_runner.startup`` before the DAG file is
parsed and templates are rendered) calls :func:`install`. That wraps the Task
SDK's ``ExecutionAPISecretsBackend`` so every connection and variable it
returns is registered with the Task SDK's ``mask_secret`` *without a name* and
in every encoded form (:func:`runlease_airflow.masking.forms`). ``mask_secret``
also sends each string to the supervisor, which writes the task log and masks
what the task prints.

Trade-off: a worker cannot tell a runlease-held variable from one Airflow
keeps in its metadata DB (the Execution API answers both alike), so every
variable fetched through the Execution API is treated as secret, whatever its
key. Processes where runlease *is* configured (in-process mode) are left
alone: the backend masks what it hands out itself.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

log = logging.getLogger(__name__)

_MARK = "__runlease_masks__"


def _connection_dict(conn: Any) -> dict[str, Any]:
    extra: Any = getattr(conn, "extra", None)
    if isinstance(extra, str) and extra:
        try:
            extra = json.loads(extra)
        except ValueError:
            extra = {}
    return {"password": getattr(conn, "password", None), "extra": extra if isinstance(extra, dict) else {}}


def _protect(value: Any) -> None:
    """Register every form of every secret part of ``value`` with the Task SDK masker (never raises)."""
    from airflow.sdk.log import mask_secret

    from runlease_airflow.masking import forms, secret_parts

    try:
        if value is None:
            return
        parts = [value] if isinstance(value, str) else secret_parts(_connection_dict(value))
        if not isinstance(value, str) and isinstance(getattr(value, "extra", None), str) and value.extra:
            parts.append(value.extra)  # the extra string exactly as the task sees it
        for text in dict.fromkeys(f for part in parts if part for f in forms(str(part))):
            mask_secret(text)
    except Exception as err:  # masking must never break the lookup; Airflow's own masking still applies
        log.warning("runlease: could not register a fetched secret with the masker (%s)", type(err).__name__)


def _wrap(method: Any) -> Any:
    if getattr(method, _MARK, False):
        return method
    if _is_coroutine(method):
        @functools.wraps(method)
        async def wrapped_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            value = await method(self, *args, **kwargs)
            _protect(value)
            return value

        setattr(wrapped_async, _MARK, True)
        return wrapped_async

    @functools.wraps(method)
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        value = method(self, *args, **kwargs)
        _protect(value)
        return value

    setattr(wrapped, _MARK, True)
    return wrapped


def _is_coroutine(method: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(method)


def _runlease_configured_here() -> bool:
    from runlease_airflow.discovery import _from_worker_chain

    try:
        return _from_worker_chain() is not None
    except Exception:
        return False


def install() -> bool:
    """Wrap ``ExecutionAPISecretsBackend`` lookups with full masking; True when installed (idempotent)."""
    try:
        from airflow.sdk.execution_time.secrets.execution_api import ExecutionAPISecretsBackend
    except ImportError:  # no Task SDK here
        return False
    if _runlease_configured_here():
        return False
    for name in ("get_connection", "get_variable", "aget_connection", "aget_variable"):
        method = ExecutionAPISecretsBackend.__dict__.get(name)
        if method is not None:
            setattr(ExecutionAPISecretsBackend, name, _wrap(method))
    return True
