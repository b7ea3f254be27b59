"""The HTTP API of ``runlease serve`` (version 1). docs/server.md has the table.

Every route but ``/healthz`` and ``/metrics`` needs a bearer token
(:mod:`runlease.server.auth`). Broker calls run as the caller's identity:
the run/task the body claims plus the verified subject as principal, so
policy ``workloads`` grants match the token, never the body.

Ownership: a workload sees, renews and revokes only leases whose principal
is its own verified subject; an admin token sees and revokes all. A
response carries a secret value in exactly one place: the ``value`` of a
lease just issued to its verified owner. Errors carry the error's message
(which by the core's rule names paths and fields, never values), passed
through the server's redactor.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from pydantic_core import to_json
from starlette.routing import Route

from runlease.errors import AccessDeniedError, RevocationIncompleteError, SecretNotFoundError
from runlease.ledger.base import AuditQuery
from runlease.models import IDENTITY_FIELDS, AuditEvent, Capability, Lease, LeaseState, Outcome, SecretPath
from runlease.server.auth import Caller
from runlease.server.requests import LeaseRequest, RenewRequest, RevokeRequest, RevokeRunRequest, VerifyKeyRequest
from runlease.server.state import ServerState

router = APIRouter()
#: Most rows one listing returns.
MAX_ROWS = 10_000
#: Most lease rows read to find a workload's own (filtered after reading).
WORKLOAD_SCAN_ROWS = 50_000
#: How long a chain verification result is reused (each KFP run's audit report asks for one).
VERIFY_CACHE_S = 30.0


def state_of(request: Request) -> ServerState:
    return request.app.state.runlease


async def authenticated(request: Request) -> Caller:
    """The caller, from the bearer token. A token already verified is looked up on the event loop;
    anything else (signature check, JWKS fetch, admin-token MAC, audited failure) runs in a worker
    thread, because it may block."""
    authenticator = state_of(request).authenticator
    header = request.headers.get("authorization")
    caller = authenticator.cached(header)
    if caller is not None:
        return caller
    route = getattr(request.scope.get("route"), "path", request.url.path)
    return await run_in_threadpool(authenticator.authenticate, header, route)


def lease_json(lease: Lease) -> dict[str, Any]:
    """A lease's metadata (``credential`` is excluded by the model; no value here)."""
    return lease.model_dump(mode="json")


def _owned(caller: Caller, lease: Lease) -> bool:
    return caller.is_admin or lease.identity.principal == caller.subject


def _refuse(state: ServerState, caller: Caller, action: str, lease: Lease) -> None:
    """Audit and raise: the caller asked to act on a lease it does not own."""
    state.metrics.denials.inc()
    state.broker.ledger.append(AuditEvent.for_identity(
        caller.identity(), action=action, outcome=Outcome.DENIED, path=str(lease.path), lease_id=lease.lease_id,
        detail={"reason": "not the lease's owner"},
    ))
    raise AccessDeniedError(f"lease {lease.lease_id} belongs to another workload")


# -- unauthenticated ---------------------------------------------------------------


@router.get("/healthz")
def health(request: Request) -> dict[str, Any]:
    """Liveness for probes: answers without touching the ledger (a slow database is not a dead server)."""
    state = state_of(request)
    return {"status": "ok", "version": state.version, "oidc": state.oidc_issuer is not None}


@router.get("/readyz")
def ready(request: Request) -> Response:
    """Readiness: the ledger answers (one cheap query). A replica whose database is gone leaves the
    Service's endpoints instead of failing every lease."""
    state = state_of(request)
    try:
        state.broker.ledger.find_leases(state=LeaseState.ACTIVE, limit=1)
    except Exception as err:  # noqa: BLE001 - any failure means "not ready"; the type says which
        return Response(content=json.dumps({"status": "unavailable", "error": type(err).__name__}),
                        status_code=503, media_type="application/json")
    return Response(content=b'{"status":"ready"}', media_type="application/json")


@router.get("/metrics")
def metrics(request: Request) -> Response:
    body, content_type = state_of(request).metrics.exposition()
    return Response(content=body, media_type=content_type)


# -- leases ---------------------------------------------------------------------------


async def lease_endpoint(request: Request) -> Response:
    """``POST /v1/leases``, the hot path, as a plain Starlette endpoint.

    Why not a FastAPI route: its dependency solver, body parsing (``json.loads`` then a
    field-by-field validation) and response machinery were a measurable share of the
    server's CPU per lease (docs/benchmarks.md). The checks are the same ones, in the
    same order: the bearer token first (401 before anything about the body is said),
    then the body, strictly validated by :class:`LeaseRequest` straight from its JSON
    bytes (unknown fields such as ``principal`` refused: 400 naming the field, never
    the input), then the broker call as the verified identity.
    """
    request.scope["route"] = LEASE_ROUTE  # the metrics label and the audited route template
    caller = await authenticated(request)
    try:
        body = LeaseRequest.model_validate_json(await request.body())
    except ValidationError as err:
        raise RequestValidationError(
            [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in err.errors()]
        ) from None
    return await _lease(state_of(request), body, caller)


async def _lease(state: ServerState, body: LeaseRequest, caller: Caller) -> Response:
    identity = caller.identity(body.claims.model_dump())
    try:
        granted = await state.call(state.broker.lease, body.ref, identity, body.ttl, kind=body.kind,
                                   stage=body.stage, detail={"via": "runlease-serve"})
    except AccessDeniedError:
        state.metrics.denials.inc()
        raise
    state.metrics.leases.inc()
    # Serialized here (pydantic's JSON for both parts) rather than by a generic encoder walking a dict.
    # The value is in this one body only, for the verified owner who just leased it.
    body_bytes = b'{"lease":' + granted.model_dump_json().encode() + b',"value":' + to_json(granted.value) + b"}"
    return Response(content=body_bytes, media_type="application/json", headers=_NO_STORE)


#: No proxy or client cache keeps a response that carries a value.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: Registered ahead of :data:`router` by the app, so it answers ``POST /v1/leases``.
LEASE_ROUTE = Route("/v1/leases", lease_endpoint, methods=["POST"])


@router.post("/v1/leases")
async def create_lease(body: LeaseRequest, request: Request, caller: Caller = Depends(authenticated)) -> Response:
    """Lease a secret (the value is in the response, once). Served by :func:`lease_endpoint`, which
    the app registers first; this declaration gives the OpenAPI document the request schema."""
    return await _lease(state_of(request), body, caller)


@router.get("/v1/leases")
def list_leases(
    request: Request,
    run_id: str | None = Query(default=None, max_length=250),
    pipeline: str | None = Query(default=None, max_length=250),
    state_filter: LeaseState | None = Query(default=None, alias="state"),
    limit: int = Query(default=200, ge=1, le=MAX_ROWS),
    caller: Caller = Depends(authenticated),
) -> dict[str, Any]:
    state = state_of(request)
    # A workload's own leases are filtered here (the ledger has no principal filter), from a bounded
    # read: narrow with run_id/pipeline for runs with more leases than that.
    rows = state.broker.ledger.find_leases(run_id=run_id, pipeline=pipeline, state=state_filter,
                                           limit=limit if caller.is_admin else WORKLOAD_SCAN_ROWS)
    own = [lease for lease in rows if _owned(caller, lease)][:limit]
    return {"leases": [lease_json(lease) for lease in own]}


@router.get("/v1/leases/{lease_id}")
def get_lease(lease_id: str, request: Request, caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    state = state_of(request)
    lease = state.broker.ledger.get_lease(lease_id)
    if not _owned(caller, lease):
        _refuse(state, caller, "inspect", lease)
    return {"lease": lease_json(lease)}


@router.post("/v1/leases/{lease_id}/renew")
def renew_lease(lease_id: str, body: RenewRequest, request: Request,
                caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    state = state_of(request)
    lease = state.broker.ledger.get_lease(lease_id)
    if not _owned(caller, lease):
        _refuse(state, caller, "renew", lease)
    renewed = state.broker.renew(lease_id, body.ttl, caller.identity(_claims_of(lease)))
    return {"lease": lease_json(renewed)}


@router.post("/v1/leases/{lease_id}/revoke")
async def revoke_lease(lease_id: str, body: RevokeRequest, request: Request,
                       caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    state = state_of(request)
    return await state.call(_revoke_owned, state, caller, lease_id, body.reason)


def _revoke_owned(state: ServerState, caller: Caller, lease_id: str, reason: str) -> dict[str, Any]:
    lease = state.broker.ledger.get_lease(lease_id)
    if not _owned(caller, lease):
        _refuse(state, caller, "revoke", lease)
    done = state.broker.revoke(lease_id, reason, caller.identity(_claims_of(lease)))
    state.metrics.revocations.inc(int(done))
    return {"revoked": done}


@router.post("/v1/runs/revoke")
def revoke_run(body: RevokeRunRequest, request: Request, caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    """The exit handler: every active lease of the run (and pipeline) that the caller owns."""
    state = state_of(request)
    actor = caller.identity({"pipeline": body.pipeline, "run_id": body.run_id, "task_id": body.task_id})
    rows = state.broker.ledger.find_leases(state=LeaseState.ACTIVE, run_id=body.run_id, pipeline=body.pipeline,
                                           task_id=body.task_id)
    count, failed = 0, []
    for lease in rows:
        if not _owned(caller, lease):
            continue
        try:
            count += state.broker.revoke(lease.lease_id, body.reason, actor)
        except Exception:  # noqa: BLE001 - audited by the broker; the others must still be revoked
            failed.append(lease.lease_id)
    state.metrics.revocations.inc(count)
    if failed:
        raise RevocationIncompleteError(count, failed)
    return {"revoked": count}


def _claims_of(lease: Lease) -> dict[str, Any]:
    return {name: getattr(lease.identity, name) for name in IDENTITY_FIELDS}


# -- secrets (metadata only) and presented keys ------------------------------------------


@router.get("/v1/secrets/{env}/{kind}/{name}")
def secret_metadata(env: str, kind: str, name: str, request: Request,
                    caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    """Where a secret's stages point, its versions and issuer: never the value.

    Needs ``read`` or ``lease`` on the path; a denial is audited like any other.
    """
    state = state_of(request)
    path = SecretPath.of(env, kind, name)
    identity = caller.identity()
    policy = state.broker.policy
    if not (policy.allows(identity, path, Capability.LEASE) or policy.allows(identity, path, Capability.READ)):
        state.metrics.denials.inc()
        state.broker.authorize(identity, path, Capability.READ, "metadata")  # audits the denial and raises
    for info in state.store.list(f"{path}", include_deleted=False):
        if info.path == path:
            return {"secret": info.model_dump(mode="json")}
    raise SecretNotFoundError(f"no secret at {path}")


@router.post("/v1/verify")
def verify_presented_key(body: VerifyKeyRequest, request: Request,
                         caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    """Whether a key a client presented is the CURRENT or PREVIOUS version (the value never leaves)."""
    state = state_of(request)
    matched = state.broker.verify_presented_key(body.ref, body.presented, caller.identity(), kind=body.kind)
    return {"matched": matched}


# -- audit and operations -----------------------------------------------------------------


@router.get("/v1/audit")
def audit_events(
    request: Request,
    run_id: str | None = Query(default=None, max_length=250),
    path: str | None = Query(default=None, max_length=400),
    principal: str | None = Query(default=None, max_length=512),
    action: str | None = Query(default=None, max_length=64),
    after_seq: int = Query(default=0, ge=0),
    limit: int = Query(default=1000, ge=1, le=MAX_ROWS),
    caller: Caller = Depends(authenticated),
) -> dict[str, Any]:
    """Audit events (never values). A workload sees the events it is the principal of."""
    state = state_of(request)
    if not caller.is_admin:
        principal = caller.subject
    query = AuditQuery(run_id=run_id, path=path, principal=principal, action=action, after_seq=after_seq,
                       limit=limit)
    return {"events": [e.model_dump(mode="json") for e in state.broker.ledger.events(query)]}


@router.get("/v1/audit/verify")
def audit_verify(request: Request, caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    """The chain's verification. Walking the whole chain is O(events), so a result is reused for
    :data:`VERIFY_CACHE_S` seconds (admins always get a fresh one): many runs' reports must not
    turn into many full walks."""
    state = state_of(request)
    cached = state.notes.get("verify")
    now = time.monotonic()
    if caller.is_admin or cached is None or now - cached[0] > VERIFY_CACHE_S:
        result, rolled_back = state.runtime.verify_audit()
        doc = {"ok": result.ok, "checked": result.checked, "first_bad_seq": result.first_bad_seq,
               "reason": result.reason}
        if rolled_back:
            doc.update(ok=False, reason=rolled_back)
        cached = (now, doc)
        state.notes["verify"] = cached
    return dict(cached[1])


@router.post("/v1/sweep")
def sweep(request: Request, caller: Caller = Depends(authenticated)) -> dict[str, Any]:
    """Run the TTL sweep now (admin tokens only; the server also runs it on a timer)."""
    state = state_of(request)
    if not caller.is_admin:
        state.metrics.denials.inc()
        raise AccessDeniedError("only an admin token may run the sweep")
    return {"expired": state.sweep_once()}
