"""Connecting to PostgreSQL with bounded waits and errors that never carry a password.

Shared by the ``postgres`` issuer (which connects with a stored admin
connection) and the PostgreSQL ledger (which connects with a DSN from the
settings). Both hold credentials, so neither the conninfo string nor
psycopg's raw exception text is ever shown: errors name the address
(``host:port/dbname``) and the user, plus libpq's reason with any password
scrubbed out.

psycopg is imported inside the functions, so ``import runlease`` works
without the ``postgres`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runlease.errors import BackendError, ConfigError, scrub

if TYPE_CHECKING:  # pragma: no cover
    import psycopg

#: Seconds to wait for a server to accept a connection (libpq's connect_timeout).
DEFAULT_CONNECT_TIMEOUT = 10

#: Keys of an Airflow postgres connection's ``extra`` that are libpq connection
#: parameters and are passed through (TLS settings above all). Anything else in
#: ``extra`` (Airflow hook options such as ``cursor``) is not libpq's business.
LIBPQ_EXTRA_KEYS: frozenset[str] = frozenset({
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcompression", "target_session_attrs",
    "application_name", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "gssencmode", "channel_binding",
})


def require_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("PostgreSQL support needs psycopg: pip install 'runlease[postgres]'") from None
    return psycopg


@dataclass(frozen=True)
class PgTarget:
    """Where to connect, plus what may be said about it in an error (never the password)."""

    params: dict[str, str] = field(repr=False)
    what: str

    @property
    def where(self) -> str:
        p = self.params
        host = p.get("host") or p.get("hostaddr") or "localhost"
        user = f" as {p['user']}" if p.get("user") else ""
        return f"{host}:{p.get('port') or 5432}/{p.get('dbname') or p.get('user') or '?'}{user}"

    @property
    def password(self) -> str | None:
        return self.params.get("password") or None

    def describe(self) -> str:
        return f"{self.what} at {self.where}"


def target_from_dsn(dsn: str, what: str) -> PgTarget:
    """Parse a libpq DSN (URL or key=value) without ever echoing it (it may hold a password)."""
    require_psycopg()
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception:  # noqa: BLE001 - psycopg's message would quote the DSN
        raise ConfigError(f"{what}: the DSN is not a valid PostgreSQL connection string") from None
    return PgTarget(params, what)


def target_from_connection(conn: dict[str, Any], what: str) -> PgTarget:
    """An Airflow postgres connection dict (host, port, login, password, schema, extra) as libpq params."""
    if not conn.get("host"):
        raise ConfigError(f"{what}: the stored connection has no host")
    params: dict[str, str] = {"host": str(conn["host"]), "port": str(conn.get("port") or 5432)}
    if conn.get("login"):
        params["user"] = str(conn["login"])
    if conn.get("password"):
        params["password"] = str(conn["password"])
    if conn.get("schema"):
        params["dbname"] = str(conn["schema"])
    for key, value in (conn.get("extra") or {}).items():
        if key in LIBPQ_EXTRA_KEYS and value is not None:
            params[key] = str(value)
    return PgTarget(params, what)


def reason(err: BaseException, target: PgTarget, *secrets: str | None) -> str:
    """libpq's first line, without the 'connection failed:' noise and without any password."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for prefix in ("connection failed: ",):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return scrub(text, target.password, *secrets)


def connect(
    target: PgTarget,
    *,
    timeout: int = DEFAULT_CONNECT_TIMEOUT,
    autocommit: bool = True,
    settings: dict[str, str] | None = None,
) -> "psycopg.Connection[Any]":
    """Open a connection within ``timeout`` seconds or raise :class:`BackendError` naming the address.

    A ``connect_timeout`` in the DSN wins over ``timeout``; zero (libpq's
    "wait forever") is never passed on. ``settings`` become ``-c name=value`` server options (statement and lock
    timeouts, TimeZone), so every later statement is bounded as well.
    """
    psycopg = require_psycopg()
    params = dict(target.params)
    if params.get("connect_timeout", "").isdigit():  # a DSN may set its own; never unbounded (0)
        timeout = int(params["connect_timeout"]) or timeout
    timeout = max(2, int(timeout))  # libpq treats less than 2 s as 2 s
    params["connect_timeout"] = str(timeout)
    # A server that vanishes mid-query must not hang us either: keepalives and
    # TCP_USER_TIMEOUT bound the wait for a dead peer (a DSN may override them).
    for key, value in (("keepalives", "1"), ("keepalives_idle", "30"), ("keepalives_interval", "10"),
                       ("keepalives_count", "3"), ("tcp_user_timeout", "60000")):
        params.setdefault(key, value)
    if settings:
        params["options"] = " ".join(f"-c {k}={v}" for k, v in settings.items())
    try:
        return psycopg.connect(autocommit=autocommit, **params)
    except psycopg.errors.ConnectionTimeout:
        raise BackendError(f"cannot connect to {target.describe()}: no answer within {timeout} s") from None
    except psycopg.Error as err:
        raise BackendError(f"cannot connect to {target.describe()}: {reason(err, target)}") from None


@contextmanager
def backend_errors(target: PgTarget, doing: str, *secrets: str | None) -> Iterator[None]:
    """Turn psycopg errors raised while ``doing`` something into a clean :class:`BackendError`.

    ``from None`` drops psycopg's exception (and its traceback text) so
    nothing downstream can print a statement or a parameter from it.
    """
    psycopg = require_psycopg()
    try:
        yield
    except psycopg.errors.QueryCanceled:
        raise BackendError(f"{doing} on {target.describe()} timed out") from None
    except psycopg.Error as err:
        sqlstate = getattr(err, "sqlstate", None)
        code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        raise BackendError(f"{doing} on {target.describe()} failed{code}: {reason(err, target, *secrets)}") from None
