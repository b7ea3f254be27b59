"""``postgres``: alternating users, so a password change never breaks a connected client.

Each secret has two login roles, ``<role>`` and ``<role>_clone``, both
members of one parent role that holds every grant (so either can do
exactly the same). CURRENT logs in as one of them. A rotation:

- ``create``: stage the *other* role's login with a fresh 256-bit password;
- ``set``: change the other role's password (``LOGIN``; created ``IN ROLE
  <parent_role>`` on first use) -- the role clients use is not touched;
- ``test``: log in as the other role with the new password, ``SELECT current_user``;
- ``finish``: the engine makes it CURRENT; the old role stays PREVIOUS and still logs in;
- ``retire`` (after the grace period): ``ALTER ROLE <old> NOLOGIN PASSWORD NULL``.

The next rotation alternates back. Why not one user with two passwords:
PostgreSQL roles have one password, so changing it would break every
client that has not re-read the secret yet.

The password never appears in SQL text (the server log, ``pg_stat_statements``):
the SCRAM-SHA-256 verifier is computed client-side with libpq's
``PQencryptPasswordConn`` and only that is sent, as in the postgres issuer.

Settings (``rotation.settings``): ``admin`` -- runlease path of a connection
whose login may ``ALTER ROLE`` (``CREATEROLE``); ``role`` -- the base role
name (default: CURRENT's login without ``_clone``); ``parent_role`` -- the
role holding the grants, used to create the clone when it does not exist.
Retire disables logins only: sessions opened with the old password are left
to finish (set ``terminate_sessions`` to end them).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runlease.errors import BackendError, ConfigError
from runlease.models import SecretPath, SecretValue
from runlease.clients.pg import PgTarget, backend_errors, connect, require_psycopg, target_from_connection
from runlease.rotation.errors import RotationTestFailed
from runlease.rotation.rotators.base import RotationContext, connection_value, rotator_settings
from runlease.store.base import StoredSecret

CLONE_SUFFIX = "_clone"
_ROLE_RE = r"^[a-z_][a-z0-9_]{0,56}$"
#: Longest any statement (or lock wait) of a rotation step may take.
STATEMENT_TIMEOUT_MS = 30_000
#: libpq's words for "the server refused this login" (as opposed to "could not reach the server").
_REFUSALS = ("password authentication failed", "is not permitted to log in", "no pg_hba.conf entry",
             "does not exist", "authentication failed")


class PostgresRotatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    admin: str = Field(min_length=5, description="runlease path of the admin connection (CREATEROLE)")
    role: str | None = Field(default=None, pattern=_ROLE_RE)
    parent_role: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    connect_timeout: int = Field(default=10, ge=2, le=120)
    terminate_sessions: bool = False
    #: Bytes of randomness in each new password.
    password_bytes: int = Field(default=32, ge=16, le=128)


def _timeouts() -> dict[str, str]:
    return {"statement_timeout": str(STATEMENT_TIMEOUT_MS), "lock_timeout": str(STATEMENT_TIMEOUT_MS)}


class PostgresRotator:
    name = "postgres"

    def _settings(self, ctx: RotationContext) -> PostgresRotatorSettings:
        return rotator_settings(PostgresRotatorSettings, ctx.policy.settings, ctx.path, self.name)

    def check_settings(self, settings: dict[str, Any], path: SecretPath) -> None:
        opts = rotator_settings(PostgresRotatorSettings, settings, path, self.name)
        SecretPath.parse(opts.admin)

    # -- roles ------------------------------------------------------------------

    def roles(self, ctx: RotationContext, login: str) -> tuple[str, str]:
        """``(in_use, other)`` for a CURRENT that logs in as ``login``."""
        opts = self._settings(ctx)
        base = opts.role or login.removesuffix(CLONE_SUFFIX)
        clone = base + CLONE_SUFFIX
        if not re.fullmatch(_ROLE_RE, base):
            raise ConfigError(f"rotator 'postgres' for {ctx.path}: role {base!r} is not a plain PostgreSQL role name")
        if login == base:
            return base, clone
        if login == clone:
            return clone, base
        raise ConfigError(f"rotator 'postgres' for {ctx.path}: CURRENT logs in as {login!r}, which is neither "
                          f"{base!r} nor {clone!r} (set rotation setting 'role')")

    def _admin(self, ctx: RotationContext) -> tuple[PgTarget, PostgresRotatorSettings]:
        opts = self._settings(ctx)
        admin = ctx.read_secret(opts.admin)
        if not isinstance(admin.value, dict):
            raise ConfigError(f"rotator 'postgres' for {ctx.path}: admin secret {opts.admin} is not a connection")
        return target_from_connection(admin.value, f"PostgreSQL admin for rotating {ctx.path}"), opts

    # -- steps ------------------------------------------------------------------

    def create(self, ctx: RotationContext, current: StoredSecret) -> SecretValue:
        conn = connection_value(current, self.name)
        _, other = self.roles(ctx, str(conn.get("login") or ""))
        opts = self._settings(ctx)
        return {**conn, "login": other, "password": secrets.token_urlsafe(opts.password_bytes)}

    def set(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        require_psycopg()
        from psycopg import sql

        new = connection_value(pending, self.name)
        in_use, other = self.roles(ctx, str(connection_value(current, self.name).get("login")))
        if new.get("login") != other:
            raise ConfigError(f"rotator 'postgres' for {ctx.path}: PENDING logs in as {new.get('login')!r}, "
                              f"expected the role not in use ({other!r})")
        target, opts = self._admin(ctx)
        password = str(new["password"])
        conn = connect(target, timeout=opts.connect_timeout, settings=_timeouts())
        try:
            with backend_errors(target, f"setting the password of role {other}", password):
                verifier = conn.pgconn.encrypt_password(password.encode(), other.encode(), b"scram-sha-256").decode()
                with conn.transaction():
                    if _role_exists(conn, other):
                        conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(
                            sql.Identifier(other), sql.Literal(verifier)))
                    elif opts.parent_role:
                        conn.execute(sql.SQL(
                            "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT "
                            "PASSWORD {} IN ROLE {}").format(
                            sql.Identifier(other), sql.Literal(verifier), sql.Identifier(opts.parent_role)))
                    else:
                        raise ConfigError(f"rotator 'postgres' for {ctx.path}: role {other} does not exist on "
                                          f"{target.where}; create it or set rotation setting 'parent_role'")
                    if opts.parent_role:  # same grants as the role in use, however the clone came to exist
                        conn.execute(sql.SQL("GRANT {} TO {}").format(
                            sql.Identifier(opts.parent_role), sql.Identifier(other)))
        finally:
            conn.close()

    def test(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        new = connection_value(pending, self.name)
        target = target_from_connection(new, f"PostgreSQL for {ctx.path}")
        opts = self._settings(ctx)
        try:
            conn = connect(target, timeout=opts.connect_timeout, settings=_timeouts())
        except BackendError as err:
            text = str(err)
            if any(word in text for word in _REFUSALS):
                said = " ".join(text.split("FATAL:", 1)[-1].split())  # libpq's reason, without the preamble
                raise RotationTestFailed(f"{target.where} refused the PENDING login: {said}") from None
            raise
        try:
            with backend_errors(target, "checking the PENDING login"):
                who = conn.execute("SELECT current_user").fetchone()
        finally:
            conn.close()
        if not who or who[0] != new.get("login"):
            raise RotationTestFailed(f"logged in to {target.where} but as {who[0] if who else None!r}")

    def finish(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Nothing in the database: both roles log in; the engine moves CURRENT."""

    def _disable(self, ctx: RotationContext, role: str, in_use: str, doing: str) -> None:
        require_psycopg()
        from psycopg import sql

        if role == in_use:
            raise ConfigError(f"rotator 'postgres' for {ctx.path}: refusing to disable {role}, the role CURRENT uses")
        target, opts = self._admin(ctx)
        conn = connect(target, timeout=opts.connect_timeout, settings=_timeouts())
        try:
            with backend_errors(target, f"{doing} role {role}"):
                with conn.transaction():
                    if not _role_exists(conn, role):
                        return
                    conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN PASSWORD NULL").format(sql.Identifier(role)))
                if opts.terminate_sessions:
                    conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                                 "WHERE usename = %s AND pid <> pg_backend_pid()", (role,))
        finally:
            conn.close()

    def retire(self, ctx: RotationContext, previous: StoredSecret, current: StoredSecret) -> None:
        old = str(connection_value(previous, self.name).get("login"))
        in_use = str(connection_value(current, self.name).get("login"))
        self._disable(ctx, old, in_use, "retiring")

    def discard(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        new = str(connection_value(pending, self.name).get("login"))
        in_use = str(connection_value(current, self.name).get("login"))
        self._disable(ctx, new, in_use, "discarding the PENDING login of")


def _role_exists(conn: Any, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None
