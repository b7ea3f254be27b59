"""API-server mode: runlease runs only inside the Airflow API server, per-DAG access rests on the task's token.

Configuration: ``[secrets] backend = runlease_airflow.secrets.RunleaseBackend``
(and its ``backend_kwargs``) on the API server, and nothing on workers. Tasks
then get connections and variables the stock Airflow 3 way -- Task SDK ->
supervisor -> Execution API (``/execution/connections/{id}``,
``/execution/variables/{key}``) -- and the API server resolves them through its
own secrets backend chain, i.e. through runlease.

This module is the API server's half, registered by the runlease plugin as a
``fastapi_root_middlewares`` entry (so no setting is needed beyond
``[secrets] backend``). :class:`ExecutionApiMiddleware` is a pure ASGI
middleware on the root app:

* It makes the request's ASGI scope available to the secrets backend through a
  context variable. Airflow's ``JWTBearer`` puts the token it validated on that
  same scope dict (``scope["ti_token"]``; Starlette's ``Mount`` updates the scope
  in place) before the route body runs, and the route body -- a sync endpoint
  run in a worker thread -- inherits the context. The backend turns the token
  into a verified identity with :mod:`runlease_airflow.ti_identity`. Outside an
  API-server request (in-process mode, workers, the CLI) the variable is unset
  and the backend falls back to :mod:`runlease_airflow.identity`.
* After the API server answered 2xx to ``PATCH /execution/task-instances/{id}/state``
  -- where the supervisor reports success, failed, up_for_retry, skipped... --
  it reads that try from the metadata database and, if the try has ended,
  revokes its leases there, on the trusted side. The id comes from the
  validated token (the route requires ``ti:self``, so it equals the path's id).
  This runs after the route committed and *before* the answer is sent: when the
  supervisor sees its success or retry acknowledged and the task goes on to its
  callbacks, the try holds no lease any more (a revocation failure is logged
  and never fails the answer).

A policy denial must reach the task as a denial: :class:`ExecutionApiAccessDenied`
is both runlease's :class:`~runlease_airflow.errors.RunleaseAccessDenied` (so
Airflow's lookup loop does not fall through to the next backend) and a FastAPI
``HTTPException`` with status 403 (so the Execution API answers 403, which the
Task SDK client maps to ``PERMISSION_DENIED`` and ``ExecutionAPISecretsBackend``
raises as ``AirflowSecretsBackendAccessDenied`` in the task), instead of the
500 any other exception becomes. A secret runlease does not hold still falls
through, so the route's 404 ("not found") lets the worker ask its next backend.

Airflow's ``[secrets] use_cache`` would serve a value cached for one DAG to
another without asking runlease; the middleware refuses to serve with it on.
With its first request it also starts the backstop sweep of
:mod:`runlease_airflow.reconcile` (run end, tries failed behind the API
server's back, TTL).
"""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
from typing import Any

from runlease_airflow.errors import RunleaseAccessDenied, RunleaseTampered
from runlease_airflow.identity import Caller

log = logging.getLogger(__name__)

#: The ASGI scope of the API-server request being served (None outside one).
_request_scope: ContextVar[dict[str, Any] | None] = ContextVar("runlease_api_request_scope", default=None)

#: Where Airflow's JWTBearer caches the validated token (execution_api/security.py _REQUEST_SCOPE_TOKEN_KEY).
TOKEN_SCOPE_KEY = "ti_token"
STATE_ROUTE = re.compile(r"^/execution/task-instances/(?P<ti_id>[0-9a-fA-F-]{32,36})/state/?$")
REVOKE_ACTOR = "runlease-airflow:api-server"
#: A state-route body is a small JSON document; never buffer more than this of one.
MAX_STATE_BODY = 64 * 1024


try:
    from fastapi import HTTPException as _HTTPException
except ImportError:  # pragma: no cover - a worker with the Task SDK only: no API server here
    _HTTPException = Exception  # type: ignore[assignment,misc]


class _Answered403:
    """Mixin for a refusal raised inside the API server: FastAPI answers it as a 403 ``permission_denied``."""

    def _answer_403(self, message: str) -> None:
        self.status_code = 403
        self.detail = {"reason": "permission_denied", "message": message}
        self.headers = None

    def __str__(self) -> str:
        return str(self.detail["message"])


class ExecutionApiAccessDenied(_Answered403, RunleaseAccessDenied, _HTTPException):  # type: ignore[misc]
    """A runlease policy denial inside the API server: no fall-through, and a 403 on the wire."""

    def __init__(self, message: str) -> None:
        RunleaseAccessDenied.__init__(self, message)
        self._answer_403(message)


class ExecutionApiTampered(_Answered403, RunleaseTampered, _HTTPException):  # type: ignore[misc]
    """A row that failed authentication, met inside the API server: refused like a denial (403,
    so the task gets ``AirflowSecretsBackendAccessDenied`` and never the next backend's value),
    not a 500 the worker might treat as a passing failure. Already audited as tampering."""

    def __init__(self, message: str) -> None:
        RunleaseTampered.__init__(self, message)
        self._answer_403(message)


def in_api_request() -> bool:
    return _request_scope.get() is not None


def current_api_caller() -> Caller | None:
    """The caller of the API-server request being served, or None outside one."""
    scope = _request_scope.get()
    if scope is None:
        return None
    from runlease_airflow.ti_identity import caller_for_token

    token = scope.get(TOKEN_SCOPE_KEY)
    if token is not None and not _is_ti_token(token):
        token = None
    return caller_for_token(token)


def _is_ti_token(token: Any) -> bool:
    try:
        from airflow.api_fastapi.execution_api.datamodels.token import TIToken
    except ImportError:  # pragma: no cover - not an API server
        return False
    return isinstance(token, TIToken)


def access_denied(message: str) -> RunleaseAccessDenied:
    """The denial to raise for the current request: a 403 inside the API server, else a plain denial."""
    return ExecutionApiAccessDenied(message) if in_api_request() else RunleaseAccessDenied(message)


def tampered(message: str) -> RunleaseTampered:
    """The integrity refusal to raise for the current request: a 403 inside the API server."""
    return ExecutionApiTampered(message) if in_api_request() else RunleaseTampered(message)


def server_backends() -> list[Any]:
    """The RunleaseBackend instances in the API server's own secrets chain (none when not configured)."""
    from airflow.configuration import ensure_secrets_loaded

    from runlease_airflow.secrets import RunleaseBackend

    return [b for b in ensure_secrets_loaded() if isinstance(b, RunleaseBackend)]


def reported_state(body: bytes) -> str | None:
    """The ``state`` of a state-route request body (JSON), or None."""
    try:
        state = json.loads(body or b"{}").get("state")
    except (ValueError, AttributeError):
        return None
    return state if isinstance(state, str) else None


def revoke_ended_try(ti_id: Any, accepted_state: str | None = None) -> int:
    """Revoke the leases of the try task instance ``ti_id`` names, once that try has ended.

    Which try -- dag, run, task, try number, map index -- always comes from the metadata
    DB. Whether it ended: the state the API server just accepted on the state route
    (``accepted_state``; the route only takes a task's own state, ``ti:self``, so a lying
    worker could only end its own leases early), or the state in the DB -- by then the
    scheduler may already have archived a retried try to ``task_instance_history``.
    """
    from runlease_airflow.listener import revoke_task_try
    from runlease_airflow.ti_identity import ENDED_STATES, task_instance_row

    backends = server_backends()
    if not backends:
        return 0
    row = task_instance_row(ti_id)
    if row is None:
        return 0
    outcome = accepted_state if accepted_state in ENDED_STATES else row["state"]
    if outcome not in ENDED_STATES:
        return 0
    count = revoke_task_try(row["dag_id"], row["run_id"], row["task_id"], row["try_number"], row["map_index"],
                            outcome, states=[b.state for b in backends], actor=REVOKE_ACTOR)
    if count:
        log.info("runlease: revoked %d lease(s) of %s.%s try %s (%s) in the API server", count, row["dag_id"],
                 row["task_id"], row["try_number"], outcome)
    return count


def _first_request() -> None:
    """Once per process, when runlease is this API server's backend: refuse Airflow's shared secrets
    cache, and start the backstop sweep (:mod:`runlease_airflow.reconcile`)."""
    from airflow.configuration import conf

    if not server_backends():
        return
    if conf.getboolean("secrets", "use_cache", fallback=False):
        raise RuntimeError(
            "runlease API-server mode: [secrets] use_cache must be False on the API server; Airflow's "
            "secrets cache would hand a value fetched for one DAG to another without asking runlease"
        )
    from runlease_airflow.reconcile import start_sweeper

    start_sweeper()


class ExecutionApiMiddleware:
    """Root ASGI middleware: exposes the request scope to the backend; revokes a try when it ends."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._checked = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        if not self._checked:
            _first_request()
            self._checked = True
        reset = _request_scope.set(scope)
        try:
            if scope.get("method") == "PATCH" and STATE_ROUTE.match(scope.get("path", "")):
                await self._state_route(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            _request_scope.reset(reset)

    async def _state_route(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass a state update through; once Airflow accepted it (2xx, committed), revoke the try's
        leases *before* the answer leaves, so a task that sees its end acknowledged holds no lease."""
        body = bytearray()

        async def receive_body() -> dict[str, Any]:
            message = await receive()
            if message.get("type") == "http.request" and len(body) < MAX_STATE_BODY:
                body.extend(message.get("body", b"")[: MAX_STATE_BODY - len(body)])
            return message

        async def send_after_revoking(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start" and 200 <= int(message.get("status", 0)) < 300:
                token = scope.get(TOKEN_SCOPE_KEY)
                if token is not None and _is_ti_token(token):
                    await self._revoke(token.id, reported_state(bytes(body)))
            await send(message)

        await self.app(scope, receive_body, send_after_revoking)

    @staticmethod
    async def _revoke(ti_id: Any, accepted_state: str | None) -> None:
        import anyio

        try:
            await anyio.to_thread.run_sync(revoke_ended_try, ti_id, accepted_state)
        except Exception as err:  # never break the API server; run end and TTL remain backstops
            log.warning("runlease: could not revoke the leases of task instance %s (%s: %s); their TTL "
                        "still applies", ti_id, type(err).__name__, err)


#: The plugin's ``fastapi_root_middlewares`` entry.
ROOT_MIDDLEWARE = {"middleware": ExecutionApiMiddleware, "args": [], "kwargs": {}, "name": "runlease-execution-api"}
