"""``RunleaseHook``: explicit leases from task code, when ``BaseHook.get_connection`` is not enough.

Every Airflow hook already gets runlease leases through the secrets backend
(``BaseHook.get_connection`` -> the Task SDK -> ``RunleaseBackend``). This hook
is for what that path cannot express:

- a lease with its own TTL (a 5-minute credential for one upload), which is
  never served from or put in the backend's lease cache;
- giving a lease back early (``revoke``) instead of at task end;
- checking an API key a client presented against the stored token's CURRENT
  and PREVIOUS versions, so a model-serving task keeps accepting clients
  through a rotation.

It uses the configured backend's store, environment and policy (see
:mod:`runlease_airflow.discovery`) unless given backend kwargs of its own.
Leases are bound to the task try that is running, so the listener revokes
them when the try ends like any other.
"""

from __future__ import annotations

import hmac
from typing import Any

from runlease.errors import AccessDeniedError, RunleaseError, SecretNotFoundError
from runlease.models import AuditEvent, Capability, Lease, Outcome, SecretPath, Stage

from runlease_airflow.errors import RunleaseAccessDenied
from runlease_airflow.identity import current_caller
from runlease_airflow.masking import connection_extra_text, protect

try:
    from airflow.sdk import BaseHook
except ImportError:  # pragma: no cover - core-only installs
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef]


class RunleaseHook(BaseHook):
    """Lease, revoke and verify runlease secrets from inside a task."""

    conn_name_attr = "runlease_conn_id"
    default_conn_name = "runlease_default"
    conn_type = "runlease"
    hook_name = "runlease"

    def __init__(self, **backend_kwargs: Any) -> None:
        super().__init__()
        self._backend_kwargs = backend_kwargs
        self._backend: Any = None

    @property
    def backend(self) -> Any:
        """The RunleaseBackend whose store and policy this hook uses."""
        if self._backend is None:
            from runlease_airflow.discovery import configured_backend
            from runlease_airflow.secrets import RunleaseBackend

            if self._backend_kwargs:
                self._backend = RunleaseBackend(**self._backend_kwargs)
            else:
                self._backend = configured_backend() or RunleaseBackend()
        return self._backend

    def path(self, secret_id: str, kind: str = "connections") -> SecretPath:
        """Where ``secret_id`` lives: the backend's prefix for its three types, else ``<env>/<kind>/<id>``."""
        config = self.backend.config
        prefix = config.prefixes.get(kind)
        if prefix is not None:
            path = prefix.path(config.settings.env, secret_id)
            if path is None:
                raise SecretNotFoundError(f"{secret_id!r} cannot name a runlease {kind} secret")
            return path
        return SecretPath.of(config.settings.env, kind, secret_id)

    def lease(self, secret_id: str, ttl: float | None = None, *, kind: str = "connections") -> Lease:
        """A fresh lease bound to the running task try (revoked when it ends, or by :meth:`revoke`)."""
        caller = current_caller()
        if not caller.leases:
            raise RunleaseError(
                "RunleaseHook.lease() binds a credential to a task try; call it while a task runs "
                f"(phase here: {caller.phase})"
            )
        path = self.path(secret_id, kind)
        try:
            lease = self.backend.broker.lease(path, caller.identity, ttl, kind=path.kind,
                                              detail={"phase": caller.phase, "via": "hook"})
        except AccessDeniedError as err:
            raise RunleaseAccessDenied(str(err)) from None
        protect(lease.value)
        return lease

    def get_leased_connection(self, conn_id: str, ttl: float | None = None) -> Any:
        """An Airflow Connection built from a fresh lease with its own TTL."""
        from airflow.sdk import Connection

        lease = self.lease(conn_id, ttl, kind="connections")
        conn = lease.value
        if not isinstance(conn, dict):
            raise RunleaseError(f"{lease.path} does not hold a connection")
        return Connection(
            conn_id=conn_id, conn_type=conn.get("conn_type"), host=conn.get("host"), login=conn.get("login"),
            password=conn.get("password"), schema=conn.get("schema"), port=conn.get("port"),
            extra=connection_extra_text(conn),
        )

    def revoke(self, lease_id: str) -> bool:
        """Give a lease back before the task ends; False if it was no longer active."""
        return self.backend.broker.revoke(lease_id, reason="released by task", identity=current_caller().identity)

    def verify_presented_key(self, secret_id: str, presented: str, *, kind: str = "tokens") -> bool:
        """True if ``presented`` equals the CURRENT or PREVIOUS version of the stored key.

        Delegates to the broker's ``verify_presented_key`` when the rotation
        engine provides it. Otherwise compares here: policy ``read`` on the
        path, constant-time comparison against both versions (PREVIOUS stays
        valid for the rotation's grace period), and an audit event that
        records which stage matched (outcome ``denied`` when none did) --
        never the presented key.
        """
        broker = self.backend.broker
        path = self.path(secret_id, kind)
        identity = current_caller().identity
        delegate = getattr(broker, "verify_presented_key", None)
        if delegate is not None:
            try:
                return bool(delegate(path, presented, identity))
            except AccessDeniedError as err:
                raise RunleaseAccessDenied(str(err)) from None
        try:
            broker.authorize(identity, path, Capability.READ, "verify")
        except AccessDeniedError as err:
            raise RunleaseAccessDenied(str(err)) from None
        matched: str | None = None
        version: int | None = None
        candidate_bytes = presented.encode()
        for stage in (Stage.CURRENT, Stage.PREVIOUS):
            try:
                stored = broker.store.get(path, stage=stage)
            except SecretNotFoundError:
                continue
            equal = isinstance(stored.value, str) and hmac.compare_digest(stored.value.encode(), candidate_bytes)
            if equal and matched is None:  # no early exit: both stages are always compared
                matched, version = stage.value, stored.version
        broker.ledger.append(AuditEvent.for_identity(
            identity, action="verify", path=str(path), version=version,
            outcome=Outcome.OK if matched else Outcome.DENIED, detail={"matched": matched},
        ))
        return matched is not None
