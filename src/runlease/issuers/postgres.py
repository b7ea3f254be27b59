"""The ``postgres`` issuer: one temporary login role per lease, dropped on revoke.

The stored secret is the *admin* connection (an Airflow postgres connection
whose login may create roles). Each lease gets a fresh role:

* named ``<role_prefix><lease_id>`` (a valid, unquoted-safe identifier,
  always passed through ``psycopg.sql.Identifier``), so a role found in
  ``pg_roles`` leads straight to its lease, run and task;
* ``LOGIN``, a 256-bit random password, ``VALID UNTIL`` = the lease expiry,
  and membership in the configured ``parent_role``: it can do exactly what
  the parent grants and nothing else (no SUPERUSER/CREATEDB/CREATEROLE).

The password never appears in SQL text: ``CREATE ROLE ... PASSWORD`` cannot
take a bind parameter, so the client computes the SCRAM-SHA-256 verifier
with libpq's ``PQencryptPasswordConn`` and sends only that (as ``psql
\\password`` does). Even with ``log_statement=all`` or in
``pg_stat_statements`` the server sees a salted verifier, never the password.

Revoke, in an order that makes the credential dead at the first step:
``ALTER ROLE ... NOLOGIN PASSWORD NULL`` (committed), terminate its
sessions (waiting for each backend to exit), then ``DROP ROLE``. If the
role owns objects, they are reassigned to the parent role first; if even
that is not allowed, the role stays disabled and a warning says why.

What revoke and renew trust (issue #12): only what they can re-derive. The
role name is recomputed as ``<role_prefix><lease_id>`` with ``role_prefix``
and ``parent_role`` taken from the secret's *authenticated* metadata (never
from the ledger row), the lease id must have the exact shape runlease mints,
the recorded role must equal the derived one, and a role that carries any
privilege a minted role never has (SUPERUSER, CREATEROLE, CREATEDB,
REPLICATION, BYPASSRLS) or is not a member of the parent role is not
touched at all: no ALTER, no REASSIGN/DROP OWNED, no DROP ROLE.

Admin privileges needed: ``CREATEROLE``, membership in the parent role
``WITH ADMIN OPTION`` (PostgreSQL 16+ needs it to grant the parent), and
``pg_signal_backend`` (to terminate the leased role's sessions).

Note on ``VALID UNTIL``: PostgreSQL checks it at login only; a session
opened before expiry keeps working until revoke (or the TTL sweep, which
revokes) terminates it.
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runlease.connection import SENSITIVE_EXTRA_WORDS
from runlease.errors import BackendError, ConfigError, IntegrityError
from runlease.issuers.base import IssuedCredential
from runlease.issuers.options import SecretLoader, connection_value, issuer_options
from runlease.models import Lease, RunIdentity, utcnow
from runlease.clients.pg import PgTarget, backend_errors, connect, require_psycopg, target_from_connection
from runlease.store.base import StoredSecret

log = logging.getLogger(__name__)

_ROLE_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: The shape of a lease id runlease mints (broker.new_lease_id): "rl" + 96 random bits in hex.
LEASE_ID_RE = re.compile(r"rl[0-9a-f]{24}")
#: Longest a single revoke/issue statement (or lock wait) may take.
STATEMENT_TIMEOUT_MS = 30_000
#: How long to wait for a terminated backend to exit (pg_terminate_backend's timeout).
TERMINATE_WAIT_MS = 5_000


class PostgresIssuerOptions(BaseModel):
    """Metadata keys of a secret leased through the ``postgres`` issuer."""

    model_config = ConfigDict(extra="ignore")

    parent_role: str = Field(min_length=1, max_length=63)
    role_prefix: str = Field(default="rl_", pattern=r"^[a-z_][a-z0-9_]{0,20}$")
    connect_timeout: int = Field(default=10, ge=1, le=120)


def role_name(prefix: str, lease_id: str) -> str:
    """``<prefix><lease_id>``, lower-case, and proven to be a plain PostgreSQL identifier."""
    name = f"{prefix}{lease_id}".lower()
    if not _ROLE_RE.fullmatch(name):
        raise ConfigError(f"cannot derive a PostgreSQL role name from lease {lease_id!r} with prefix {prefix!r}")
    return name


def _leased_connection(admin: dict[str, Any], role: str, password: str) -> dict[str, Any]:
    """Same host/port/database and TLS settings as the admin connection, the new role's login."""
    extra = {k: v for k, v in (admin.get("extra") or {}).items()
             if not any(w in str(k).lower() for w in SENSITIVE_EXTRA_WORDS)}
    return {
        "conn_type": admin.get("conn_type") or "postgres",
        "host": admin.get("host"),
        "port": admin.get("port") or 5432,
        "schema": admin.get("schema"),
        "login": role,
        "password": password,
        "extra": extra,
    }


class PostgresIssuer:
    name = "postgres"

    def __init__(self, load_secret: SecretLoader) -> None:
        self.load_secret = load_secret

    def check_metadata(self, metadata: dict[str, Any], path: str) -> None:
        issuer_options(PostgresIssuerOptions, metadata, path, self.name)

    # -- issue ----------------------------------------------------------------

    def issue(self, secret: StoredSecret, identity: RunIdentity, lease_id: str, ttl: timedelta) -> IssuedCredential:
        opts = issuer_options(PostgresIssuerOptions, secret.metadata, secret.path, self.name)
        admin = connection_value(secret, self.name, "the admin connection that creates roles")
        target = target_from_connection(admin, f"PostgreSQL for {secret.path}")
        role = role_name(opts.role_prefix, lease_id)
        password = secrets.token_urlsafe(32)
        valid_until = utcnow() + ttl
        self._create_role(target, opts, role, password, valid_until)
        return IssuedCredential(
            value=_leased_connection(admin, role, password),
            expires_at=valid_until,
            state={"role": role, "role_prefix": opts.role_prefix, "parent_role": opts.parent_role,
                   "host": target.params.get("host"), "port": int(target.params.get("port", 5432)),
                   "dbname": target.params.get("dbname")},
        )

    def _create_role(self, target: PgTarget, opts: PostgresIssuerOptions, role: str, password: str,
                     valid_until: datetime) -> None:
        require_psycopg()
        from psycopg import sql

        conn = connect(target, timeout=opts.connect_timeout, settings=_timeouts())
        try:
            with backend_errors(target, f"creating role {role}", password):
                verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
                statement = sql.SQL(
                    "CREATE ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT "
                    "PASSWORD {verifier} VALID UNTIL {until} IN ROLE {parent}"
                ).format(
                    role=sql.Identifier(role), verifier=sql.Literal(verifier),
                    until=sql.Literal(valid_until.isoformat()), parent=sql.Identifier(opts.parent_role),
                )
                with conn.transaction():
                    conn.execute(statement)
        finally:
            conn.close()

    # -- renew and revoke -----------------------------------------------------

    def _role_of(self, lease: Lease, opts: PostgresIssuerOptions) -> str | None:
        """The role this lease created, re-derived from the lease id and the secret's authenticated
        options; the ledger row only has to agree with it."""
        if not lease.issuer_state.get("role"):
            return None
        if not LEASE_ID_RE.fullmatch(lease.lease_id):
            raise IntegrityError(f"lease {lease.lease_id[:40]!r} does not have the shape of a runlease lease id; "
                                 "refusing to touch any role for it")
        expected = role_name(opts.role_prefix, lease.lease_id)
        if lease.issuer_state["role"] != expected:
            raise IntegrityError(f"lease {lease.lease_id}: recorded role is not the one this issuer mints for it "
                                 f"({expected}); refusing to touch it")
        return expected

    def _admin_target(self, lease: Lease) -> tuple[PgTarget, PostgresIssuerOptions]:
        secret = self.load_secret(lease.path)
        opts = issuer_options(PostgresIssuerOptions, secret.metadata, lease.path, self.name)
        admin = connection_value(secret, self.name, "the admin connection that creates roles")
        return target_from_connection(admin, f"PostgreSQL for {lease.path}"), opts

    def renew(self, lease: Lease, ttl: timedelta) -> datetime:
        """Move ``VALID UNTIL`` to now + ttl (for a task that runs longer than planned)."""
        require_psycopg()
        from psycopg import sql

        target, opts = self._admin_target(lease)
        role = self._role_of(lease, opts)
        if role is None:
            raise ConfigError(f"lease {lease.lease_id} has no PostgreSQL role to renew")
        valid_until = utcnow() + ttl
        conn = connect(target, timeout=opts.connect_timeout, settings=_timeouts())
        try:
            with backend_errors(target, f"renewing role {role}"), conn.transaction():
                if not _minted_role_exists(conn, role, opts.parent_role):
                    raise BackendError(f"role {role} of lease {lease.lease_id} no longer exists on {target.describe()}")
                conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(
                    sql.Identifier(role), sql.Literal(valid_until.isoformat())))
        finally:
            conn.close()
        return valid_until

    def revoke(self, lease: Lease) -> None:
        """Disable the role, terminate its sessions, drop it. Idempotent: a missing role is done."""
        require_psycopg()
        from psycopg import sql

        if not lease.issuer_state.get("role"):
            return
        target, opts = self._admin_target(lease)
        role = self._role_of(lease, opts)
        if role is None:
            return
        ident = sql.Identifier(role)
        conn = connect(target, timeout=opts.connect_timeout, settings=_timeouts())
        try:
            with backend_errors(target, f"revoking role {role}"):
                with conn.transaction():
                    if not _minted_role_exists(conn, role, opts.parent_role):
                        return
                    conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(ident))
                lingering = conn.execute(
                    "SELECT count(*) FILTER (WHERE NOT pg_terminate_backend(pid, %s)) "
                    "FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
                    (TERMINATE_WAIT_MS, role),
                ).fetchone()[0]
                if lingering:
                    log.warning("role %s: %d session(s) did not exit within %d ms of being terminated",
                                role, lingering, TERMINATE_WAIT_MS)
                self._drop(conn, role, opts.parent_role, target)
        finally:
            conn.close()

    def _drop(self, conn: Any, role: str, parent: str, target: PgTarget) -> None:
        psycopg = require_psycopg()
        from psycopg import sql

        ident = sql.Identifier(role)
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP ROLE {}").format(ident))
            return
        except psycopg.errors.DependentObjectsStillExist:
            pass
        # The role owns objects or holds grants: hand its objects to the parent, then drop it.
        try:
            with conn.transaction():
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
                if parent:
                    conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, sql.Identifier(parent)))
                conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                conn.execute(sql.SQL("DROP ROLE {}").format(ident))
        except psycopg.Error as err:
            log.warning("role %s on %s is disabled (NOLOGIN, sessions terminated) but was not dropped: %s",
                        role, target.where, type(err).__name__)


def _minted_role_exists(conn: Any, role: str, parent: str) -> bool:
    """False if ``role`` is gone; :class:`IntegrityError` if it is not a role this issuer could have minted.

    A minted role is a plain login role inside ``parent`` with none of the
    attributes CREATE ROLE here never sets; anything else (a superuser or an
    application role that happens to carry the name) is left untouched.
    """
    row = conn.execute(
        "SELECT r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls, "
        "EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles p ON p.oid = m.roleid "
        "        WHERE m.member = r.oid AND p.rolname = %s) "
        "FROM pg_roles r WHERE r.rolname = %s",
        (parent, role),
    ).fetchone()
    if row is None:
        return False
    privileged, in_parent = row
    if privileged or not in_parent:
        raise IntegrityError(f"role {role} is not one this issuer minted (it holds extra attributes or is not "
                             f"a member of the parent role); refusing to touch it")
    return True


def _timeouts() -> dict[str, str]:
    return {"statement_timeout": str(STATEMENT_TIMEOUT_MS), "lock_timeout": str(STATEMENT_TIMEOUT_MS)}
