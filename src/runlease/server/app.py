"""The FastAPI application of ``runlease serve``: routes, error mapping, metrics, the TTL sweep task.

Errors become JSON ``{"error": {"type", "message", "exit_code"}}`` with the
HTTP status a client can act on (401 no/bad token, 403 policy or ownership,
404 unknown path or lease, 400 bad input, 409 CAS conflict, 503 a backend
is unavailable: retry). Request validation errors name the field and the
problem, never the input (a mistyped ``presented`` key must not be echoed).
Unexpected exceptions answer 500 with the exception's type only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runlease.errors import (
    AccessDeniedError,
    BackendError,
    ConflictError,
    IntegrityError,
    LeaseNotFoundError,
    RevocationIncompleteError,
    RunleaseError,
    SecretNotFoundError,
    StoreAccessDeniedError,
    StoreUnavailableError,
)
from runlease.server.metrics import BodyLimitMiddleware, MetricsMiddleware
from runlease.server.routes import LEASE_ROUTE, router
from runlease.server.state import ServerState
from runlease.server.workload_tokens import AuthenticationError

_log = logging.getLogger("runlease.server")


def status_of(err: RunleaseError) -> int:
    if isinstance(err, AuthenticationError):
        return 401
    if isinstance(err, StoreAccessDeniedError):
        return 502  # the central manager refused the *server's* credentials: not the caller's fault
    if isinstance(err, AccessDeniedError):
        return 403
    if isinstance(err, (SecretNotFoundError, LeaseNotFoundError)):
        return 404
    if isinstance(err, ConflictError):
        return 409
    if isinstance(err, (StoreUnavailableError, BackendError, RevocationIncompleteError)):
        return 503
    if isinstance(err, IntegrityError):
        return 500
    return 400 if err.exit_code == 2 else 500


def error_body(kind: str, message: str, exit_code: int) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "exit_code": exit_code}}


def create_app(state: ServerState) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_sweep_forever(state)) if state.sweep_interval_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="runlease", version=state.version, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json")
    app.state.runlease = state
    app.router.routes.append(LEASE_ROUTE)  # before the router's declaration of the same route: see routes.py
    app.include_router(router)
    redactor = state.broker.redactor

    @app.exception_handler(RunleaseError)
    async def runlease_error(request: Request, err: RunleaseError) -> JSONResponse:
        status = status_of(err)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": "1"}
        return JSONResponse(error_body(type(err).__name__, redactor.redact(str(err)), err.exit_code),
                            status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                             for e in err.errors())
        return JSONResponse(error_body("InvalidRequest", redactor.redact(problems), 2), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        _log.error("unexpected %s on %s", type(err).__name__, request.url.path)
        return JSONResponse(error_body("InternalError", f"unexpected {type(err).__name__}", 1), status_code=500)

    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app


async def _sweep_forever(state: ServerState) -> None:
    """The TTL backstop, in the server: leases of a SIGKILLed pod expire without any cron job."""
    while True:
        await asyncio.sleep(state.sweep_interval_s)
        await asyncio.to_thread(state.sweep_once)
