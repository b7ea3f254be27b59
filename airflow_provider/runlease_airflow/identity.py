"""Who is asking, and in which phase: the run identity a resolution is bound to.

Airflow calls a secrets backend in several phases of a task process, and the
identity is available in a different place in each (Airflow 3.3 Task SDK,
``airflow/sdk/execution_time/task_runner.py``):

``render``
    ``_prepare`` renders templates (``{{ conn.x }}``, ``{{ var.value.y }}``) inside
    ``set_current_context(context)`` but *before* ``_execute_task`` exports
    ``AIRFLOW_CTX_*`` to ``os.environ``. The current context's ``ti`` carries
    dag_id, run_id, task_id, try_number and map_index.
``execute``
    ``_execute_task`` runs with the same current context and ``AIRFLOW_CTX_*``
    set (``context_to_airflow_vars``); the context still wins because it also
    has the map index, which the environment variables do not.
``task``
    No current context, but ``AIRFLOW_CTX_*`` set: task callbacks run from
    ``finalize`` after the context was popped, and child processes of the task
    (a BashOperator's ``python script.py``) inherit the variables.
``parse``
    ``startup`` parses the DAG file inside
    ``_airflow_parsing_context_manager(dag_id=..., task_id=...)``, which sets
    ``_AIRFLOW_PARSING_CONTEXT_DAG_ID``/``_TASK_ID`` (read back through
    ``airflow.sdk.get_parsing_context``). There is no run yet, so this is a
    parse-time *read* bound to the dag and task, not a lease. That context
    manager never removes variables it set, so it is consulted last.
``outside``
    Anything else: ``airflow connections get``, the scheduler, the API server,
    the DAG processor. Also a read, by the Unix user running the process.

Known limit: ``AIRFLOW_CTX_*`` are never removed from ``os.environ``. A real task
process exits after its task, but a process that runs several tasks in-process
(``dag.test()`` without an executor) keeps the last task's variables, and a
lookup it makes *between* tasks (e.g. while re-parsing DAG files) is attributed
to that last task.
"""

from __future__ import annotations

import functools
import getpass
import os
from dataclasses import dataclass
from typing import Any

from runlease.models import RunIdentity

ORCHESTRATOR = "airflow"
#: Pipeline name used when no DAG is known (matches policy principal "airflow:-").
NO_PIPELINE = "-"

#: ``execution-api``: a running try asking through the API server (runlease_airflow.ti_identity).
LEASING_PHASES = frozenset({"render", "execute", "task", "execution-api"})


@dataclass(frozen=True)
class Caller:
    identity: RunIdentity
    phase: str

    @property
    def leases(self) -> bool:
        """True inside a task try: resolutions become leases. Otherwise they are audited reads."""
        return self.phase in LEASING_PHASES


_get_current_context: Any = None


def _current_context() -> Any | None:
    """The Task SDK's current context (``airflow.sdk.get_current_context``), or None outside one."""
    global _get_current_context
    if _get_current_context is None:
        try:
            from airflow.sdk import get_current_context
        except ImportError:  # no Task SDK in this process
            return None
        _get_current_context = get_current_context
    try:
        return _get_current_context()
    except RuntimeError:  # "Current context was requested but no context was found!"
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _map_index(value: Any) -> int | None:
    index = _int(value)
    # Airflow uses -1 for "not mapped"; the audit trail shows no map index instead.
    return None if index is None or index < 0 else index


def _from_context(context: Any) -> RunIdentity | None:
    ti = context.get("ti") or context.get("task_instance")
    if ti is None or not getattr(ti, "dag_id", None):
        return None
    return RunIdentity(
        orchestrator=ORCHESTRATOR,
        pipeline=ti.dag_id,
        run_id=getattr(ti, "run_id", None),
        task_id=getattr(ti, "task_id", None),
        try_number=_int(getattr(ti, "try_number", None)),
        map_index=_map_index(getattr(ti, "map_index", None)),
    )


def _from_env(environ: os._Environ[str] | dict[str, str]) -> RunIdentity | None:
    dag_id = environ.get("AIRFLOW_CTX_DAG_ID")
    run_id = environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if not dag_id or not run_id:
        return None
    return RunIdentity(
        orchestrator=ORCHESTRATOR,
        pipeline=dag_id,
        run_id=run_id,
        task_id=environ.get("AIRFLOW_CTX_TASK_ID") or None,
        try_number=_int(environ.get("AIRFLOW_CTX_TRY_NUMBER")),
    )


def _unix_user() -> str:
    """This process's user name (looked up once per uid: every lookup outside a task names it)."""
    return _user_of(os.getuid())


@functools.lru_cache(maxsize=8)
def _user_of(uid: int) -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return f"uid{uid}"


def current_caller() -> Caller:
    """Resolve the caller for the phase this process is in right now (see the module docstring)."""
    environ = os.environ
    context = _current_context()
    if context is not None:
        identity = _from_context(context)
        if identity is not None:
            env_task = environ.get("AIRFLOW_CTX_TASK_ID")
            env_run = environ.get("AIRFLOW_CTX_DAG_RUN_ID")
            env_try = _int(environ.get("AIRFLOW_CTX_TRY_NUMBER"))
            executing = (
                env_task == identity.task_id and env_run == identity.run_id
                and environ.get("AIRFLOW_CTX_DAG_ID") == identity.pipeline and env_try == identity.try_number
            )
            return Caller(identity, "execute" if executing else "render")
    identity = _from_env(environ)
    if identity is not None:
        return Caller(identity, "task")
    parse_dag = environ.get("_AIRFLOW_PARSING_CONTEXT_DAG_ID")
    if parse_dag:
        return Caller(
            RunIdentity(
                orchestrator=ORCHESTRATOR, pipeline=parse_dag,
                task_id=environ.get("_AIRFLOW_PARSING_CONTEXT_TASK_ID") or None,
            ),
            "parse",
        )
    return Caller(
        RunIdentity(orchestrator=ORCHESTRATOR, pipeline=NO_PIPELINE, principal=f"unix:{_unix_user()}"),
        "outside",
    )
