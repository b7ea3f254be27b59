"""The verified identity of an Execution API request: the task instance its validated token names.

Inside the API server, every Execution API route depends on
``airflow/api_fastapi/execution_api/security.py`` ``JWTBearer``: it validates the
task's JWT with the API server's own ``JWTValidator`` (signature, ``aud``,
``exp``, ``iat``, ``iss`` when configured) and caches the result, a ``TIToken``
whose ``id`` is the JWT ``sub`` -- the task instance id -- on the ASGI request
scope under ``"ti_token"``. The connections and variables routes resolve
``require_auth`` (token type ``execution`` only) *before* the route body calls
the secrets backend, so by the time runlease is asked, the token on the scope
is one Airflow itself accepted. A client cannot put anything on the ASGI scope;
only server code can.

This module turns that token into a :class:`~runlease.models.RunIdentity` with
the task instance's ``dag_id``, ``run_id``, ``task_id``, ``try_number`` and
``map_index`` read from Airflow's metadata database by that id -- never from a
header, an environment variable, the request body or any other claim of the
worker -- and marks those fields verified
(``Verification(method="airflow-execution-api", subject=<ti id>)``).

Airflow gives every try a new task instance id
(``TaskInstance.prepare_db_for_next_try``); an earlier try's row moves to
``task_instance_history`` with its id, where it is found (as an ended try). A
validated token naming neither gets no verified identity at all, and a
``require_verified`` policy denies it.

Which resolutions lease: a task instance whose state is not terminal (running,
deferred, ...) gets a lease bound to its try. Once the API server has recorded
the try's end (success and up_for_retry are sent *before* the task's callbacks
run, ``airflow/sdk/execution_time/supervisor.py`` ``_send_terminal_state_msg``),
the try's leases are already revoked (:mod:`runlease_airflow.api_server`); a
callback that still asks gets an audited *read* bound to the same verified
identity, so nothing outlives the try as an active lease.
"""

from __future__ import annotations

from typing import Any

from runlease.models import IDENTITY_FIELDS, RunIdentity, Verification

from runlease_airflow.identity import ORCHESTRATOR, Caller, _unix_user

METHOD = "airflow-execution-api"
#: Pipeline of a request to the API server that carries no task token (UI, REST API, ...).
API_SERVER_PIPELINE = "api-server"

#: Task-instance states after which a try can no longer run
#: (``airflow.utils.state.TerminalTIState`` plus up_for_retry: the next try has a new id).
ENDED_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed", "up_for_retry"})

#: Audit phase of a lookup made by a running try through the Execution API.
PHASE_TASK = "execution-api"
#: ... by a try whose end the API server already recorded (callbacks after success/retry).
PHASE_ENDED = "after-try"
#: ... by a request without a task token (UI, REST API).
PHASE_API = "api-server"


def task_instance_row(ti_id: Any) -> dict[str, Any] | None:
    """dag_id, run_id, task_id, try_number, map_index, state of the try whose task instance id is ``ti_id``.

    Read from the metadata database the API server itself uses: the live
    ``task_instance`` row, or -- for a try that already ended and was followed by
    another (a retry archives the try, ``TaskInstanceHistory.record_ti``) -- its
    ``task_instance_history`` row, which keeps the id. None when neither has it.
    """
    import uuid

    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.taskinstancehistory import TaskInstanceHistory as TIH
    from airflow.utils.session import create_session

    if not isinstance(ti_id, uuid.UUID):
        ti_id = uuid.UUID(str(ti_id))
    with create_session() as session:
        row = session.execute(
            select(TI.dag_id, TI.run_id, TI.task_id, TI.try_number, TI.map_index, TI.state).where(TI.id == ti_id)
        ).first()
        if row is None:
            row = session.execute(
                select(TIH.dag_id, TIH.run_id, TIH.task_id, TIH.try_number, TIH.map_index, TIH.state)
                .where(TIH.task_instance_id == ti_id)
                .order_by(TIH.try_number.desc())
            ).first()
    if row is None:
        return None
    state = row.state
    return {
        "dag_id": row.dag_id, "run_id": row.run_id, "task_id": row.task_id,
        "try_number": int(row.try_number) if row.try_number is not None else None,
        "map_index": row.map_index if row.map_index is not None and row.map_index >= 0 else None,
        "state": str(getattr(state, "value", state)) if state is not None else None,
    }


def verified_identity(ti_id: str, row: dict[str, Any], issuer: str | None = None) -> RunIdentity:
    """The identity of task instance ``ti_id`` with every field proven by the API server."""
    return RunIdentity(
        orchestrator=ORCHESTRATOR,
        pipeline=row["dag_id"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        try_number=row["try_number"],
        map_index=row["map_index"],
        verification=Verification(
            method=METHOD, subject=ti_id, issuer=issuer, fields=IDENTITY_FIELDS,
            claims={"ti_state": row["state"] or "none"},
        ),
    )


def caller_for_token(token: Any | None) -> Caller:
    """Who is asking, for a request inside the API server, given the token Airflow validated (or None)."""
    if token is None:
        return Caller(
            RunIdentity(orchestrator=ORCHESTRATOR, pipeline=API_SERVER_PIPELINE, principal=f"unix:{_unix_user()}"),
            PHASE_API,
        )
    ti_id = str(token.id)
    row = task_instance_row(token.id)
    if row is None:
        # A validated token naming no live task instance: say which token, vouch for nothing.
        return Caller(
            RunIdentity(orchestrator=ORCHESTRATOR, pipeline=API_SERVER_PIPELINE, principal=f"airflow-token:{ti_id}"),
            PHASE_API,
        )
    issuer = getattr(getattr(token, "claims", None), "iss", None)
    identity = verified_identity(ti_id, row, issuer=issuer if isinstance(issuer, str) else None)
    return Caller(identity, PHASE_ENDED if row["state"] in ENDED_STATES else PHASE_TASK)
