"""Find the RunleaseBackend this Airflow process is configured with.

The listener and the hook need the same store, environment and policy as the
secrets backend, and the only source of truth for those is Airflow's own
configuration. In a task process the Task SDK has already built (and
memoised) the worker chain, so that instance is reused
(``airflow/sdk/execution_time/supervisor.py`` ``ensure_secrets_backend_loaded``).
Elsewhere -- the scheduler finishing a DAG run, the process running
``dag.test()`` -- the configured custom backend is built through
``get_custom_secret_backend`` (``airflow/sdk/configuration.py``, falling back to
``airflow/configuration.py``), which reads ``[workers]``/``[secrets]`` and the
per-key ``BACKEND_KWARG`` overrides exactly as Airflow does. Construction is
cheap after the first time: the runtime is shared per process
(:mod:`runlease_airflow.process_state`).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def _from_worker_chain() -> Any | None:
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:
        return None
    if getattr(task_runner, "SUPERVISOR_COMMS", None) is None:
        return None
    from airflow.sdk.execution_time.supervisor import ensure_secrets_backend_loaded

    from runlease_airflow.secrets import RunleaseBackend

    for backend in ensure_secrets_backend_loaded():
        if isinstance(backend, RunleaseBackend):
            return backend
    return None


def _from_config(worker_mode: bool) -> Any | None:
    try:
        from airflow.sdk.configuration import get_custom_secret_backend
    except ImportError:  # pragma: no cover - core-only installs
        from airflow.configuration import get_custom_secret_backend  # type: ignore[no-redef]
    backend = get_custom_secret_backend(worker_mode=worker_mode)
    from runlease_airflow.secrets import RunleaseBackend

    return backend if isinstance(backend, RunleaseBackend) else None


def configured_backend() -> Any | None:
    """The configured RunleaseBackend, or None when Airflow is not configured to use runlease."""
    backend = _from_worker_chain()
    if backend is not None:
        return backend
    for worker_mode in (True, False):
        backend = _from_config(worker_mode)
        if backend is not None:
            return backend
    return None
