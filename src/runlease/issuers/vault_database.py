"""The ``vault-database`` issuer: Vault's database secrets engine mints the credential.

Vault creates the database user, owns its lifetime and drops it when the
Vault lease ends; runlease binds that Vault lease to the run. Wire calls
(Vault HTTP API, via hvac):

* issue:  ``GET /v1/<mount>/creds/<role>`` -> ``lease_id``, ``lease_duration``,
  ``renewable``, ``data.username``/``data.password``
  (https://developer.hashicorp.com/vault/api-docs/secret/databases#generate-credentials).
  The lease's expiry is Vault's ``lease_duration`` when that is shorter than
  the requested TTL: Vault decides, and drops the user at its own expiry.
* revoke: ``PUT /v1/sys/leases/revoke`` with ``{"lease_id": ...}`` -> 204
  (https://developer.hashicorp.com/vault/api-docs/system/leases#revoke-lease).
  Vault answers 204 for a lease it no longer has, so revoke is idempotent.
* renew:  ``PUT /v1/sys/leases/renew`` with ``{"lease_id", "increment"}`` ->
  the new ``lease_duration`` (Vault may grant less than asked, capped by the
  role's max TTL) (https://developer.hashicorp.com/vault/api-docs/system/leases#renew-lease).

The stored secret is the Vault connection that may call these endpoints:
``host`` (with scheme, e.g. ``https://vault.internal``, or plain host plus
``extra.url``), ``port``, ``password`` = the Vault token,
``extra.namespace`` (Enterprise) and ``extra.verify`` (CA bundle path or
false). Metadata: ``role`` (required), ``mount`` (default ``database``),
and ``target``: the non-secret part of the database connection the
generated user logs in to (conn_type, host, port, schema, extra), because
Vault returns only a username and password.

The Vault lease id is stored in the ledger (it is an identifier; acting on
it needs the token). Vault's response body is never echoed in an error:
it carries the password.

What a ledger row can and cannot make runlease do: the mount and role are
taken from the *secret's* metadata, re-read from the store at renew and
revoke time, never from the row (a row is not authenticated against an
attacker who can write the ledger database); the recorded Vault lease id must
lie under ``<mount>/creds/<role>/`` of that metadata, or runlease refuses to
act on it. So a forged row cannot make runlease revoke or renew an arbitrary
Vault lease, or one of another mount or role.

A lease outlived by its issuing token: Vault revokes every lease a token
created when that token expires or is revoked (the database user is dropped
with it). The token in the stored connection is the issuing token; its
SHA-256 fingerprint (not the token) is kept in the ledger. When revoke meets
a token Vault no longer knows (403, and ``lookup-self`` fails too) and that
token is the one that issued the lease, the Vault lease is already gone, so
the runlease lease is closed instead of stranding forever. If the token was
rotated since (another fingerprint), revoke uses the new one.

Every request carries ``X-Correlation-ID`` (the run that leased, renewed or
revoked), like the Vault store's, so Vault's audit log joins runlease's.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runlease.audit import correlation
from runlease.errors import BackendError, ConfigError, scrub
from runlease.issuers.base import IssuedCredential
from runlease.issuers.options import SecretLoader, connection_value, issuer_options
from runlease.models import Lease, RunIdentity, utcnow
from runlease.store.base import StoredSecret

_SEGMENT = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"

log = logging.getLogger(__name__)


def token_fingerprint(token: str) -> str:
    """Which token issued a lease, without storing it (a Vault token has >= 128 bits of entropy)."""
    return hashlib.sha256(f"runlease-vault-token\x1f{token}".encode()).hexdigest()[:32]


class VaultTarget(BaseModel):
    """The database the generated user connects to (everything but login and password)."""

    model_config = ConfigDict(extra="forbid")

    conn_type: str = "postgres"
    host: str | None = None
    port: int | None = Field(default=None, ge=0, le=65535)
    schema_: str | None = Field(default=None, alias="schema")
    extra: dict[str, Any] = Field(default_factory=dict)


class VaultDatabaseOptions(BaseModel):
    """Metadata keys of a secret leased through the ``vault-database`` issuer."""

    model_config = ConfigDict(extra="ignore")

    role: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    mount: str = Field(default="database", pattern=_SEGMENT)
    target: VaultTarget = Field(default_factory=VaultTarget)
    timeout: int = Field(default=10, ge=1, le=120)


def vault_url(conn: dict[str, Any]) -> str:
    """Vault's base URL from an Airflow-style connection (``extra.url`` wins; https by default)."""
    extra = conn.get("extra") or {}
    if extra.get("url"):
        return str(extra["url"]).rstrip("/")
    host = str(conn.get("host") or "")
    if not host:
        raise ConfigError("vault-database: the stored Vault connection has no host")
    if "://" not in host:
        host = f"https://{host}"
    port = conn.get("port")
    return f"{host.rstrip('/')}:{port}" if port else host.rstrip("/")


class VaultDatabaseIssuer:
    name = "vault-database"

    def __init__(self, load_secret: SecretLoader) -> None:
        self.load_secret = load_secret

    def check_metadata(self, metadata: dict[str, Any], path: str) -> None:
        issuer_options(VaultDatabaseOptions, metadata, path, self.name)

    # -- plumbing ---------------------------------------------------------------

    def _client(self, secret: StoredSecret, opts: VaultDatabaseOptions) -> tuple[Any, str, str]:
        try:
            import hvac
        except ImportError:
            raise ConfigError("the vault-database issuer needs hvac: pip install 'runlease[vault]'") from None
        conn = connection_value(secret, self.name, "a Vault connection whose password is the token")
        token = conn.get("password")
        if not token:
            raise ConfigError(f"{secret.path}: the Vault connection has no token (put it in the password field)")
        from runlease.store.vault_auth import correlated_http_session

        extra = conn.get("extra") or {}
        url = vault_url(conn)
        session = correlated_http_session(extra.get("verify", True), url)
        client = hvac.Client(url=url, token=str(token), namespace=extra.get("namespace"),
                             verify=session.verify, timeout=opts.timeout, session=session)
        return client, url, str(token)

    def _call(self, url: str, token: str, doing: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one hvac call; turn every failure into a BackendError naming Vault's address."""
        import hvac.exceptions
        import requests

        try:
            return func(*args, **kwargs)
        except hvac.exceptions.VaultError as err:
            errors = "; ".join(str(e) for e in (getattr(err, "errors", None) or []))[:300]
            status = type(err).__name__
            raise BackendError(scrub(f"Vault at {url} refused {doing}: {status}: {errors or 'no detail'}", token)) from None
        except requests.exceptions.Timeout:
            raise BackendError(f"Vault at {url} did not answer {doing} in time") from None
        except requests.exceptions.SSLError:
            raise BackendError(f"Vault at {url}: TLS handshake failed ({doing}); check its certificate and "
                               "the connection's extra.verify (CA bundle)") from None
        except requests.exceptions.RequestException as err:
            raise BackendError(scrub(f"cannot reach Vault at {url} ({doing}): {type(err).__name__}", token)) from None

    # -- issue, renew, revoke -----------------------------------------------------

    def issue(self, secret: StoredSecret, identity: RunIdentity, lease_id: str, ttl: timedelta) -> IssuedCredential:
        opts = issuer_options(VaultDatabaseOptions, secret.metadata, secret.path, self.name)
        client, url, token = self._client(secret, opts)
        doing = f"GET {opts.mount}/creds/{opts.role}"
        response = self._call(url, token, doing, client.secrets.database.generate_credentials,
                              name=opts.role, mount_point=opts.mount)
        try:
            vault_lease = str(response["lease_id"])
            duration = int(response["lease_duration"])
            username = str(response["data"]["username"])
            password = str(response["data"]["password"])
        except (KeyError, TypeError, ValueError):
            raise BackendError(f"Vault at {url} answered {doing} without lease_id/lease_duration/username/password") from None
        target = opts.target
        value = {
            "conn_type": target.conn_type, "host": target.host, "port": target.port, "schema": target.schema_,
            "login": username, "password": password, "extra": dict(target.extra),
        }
        return IssuedCredential(
            value=value,
            expires_at=utcnow() + timedelta(seconds=duration),
            state={"vault_lease_id": vault_lease, "renewable": bool(response.get("renewable")),
                   "mount": opts.mount, "role": opts.role, "username": username,
                   "token_fingerprint": token_fingerprint(token)},
        )

    def _vault_lease(self, lease: Lease, opts: VaultDatabaseOptions) -> str | None:
        """The recorded Vault lease id, if it lies under the mount and role the *secret* names.

        ``mount``/``role`` in the ledger row are for humans only: a forged row must not
        make runlease act on another mount's or role's lease.
        """
        vault_lease = lease.issuer_state.get("vault_lease_id")
        if not vault_lease:
            return None
        expected = f"{opts.mount}/creds/{opts.role}/"
        if not str(vault_lease).startswith(expected) or ".." in str(vault_lease):
            raise ConfigError(f"lease {lease.lease_id}: recorded Vault lease is not under {expected} "
                              f"(the mount and role of {lease.path}); refusing it")
        return str(vault_lease)

    def renew(self, lease: Lease, ttl: timedelta) -> datetime:
        """Ask Vault for ``ttl`` more seconds; returns the expiry Vault actually granted."""
        with correlation.bound(lease.identity):  # Vault's audit log: the run that holds the lease
            return self._renew(lease, ttl)

    def _renew(self, lease: Lease, ttl: timedelta) -> datetime:
        secret = self.load_secret(lease.path)
        opts = issuer_options(VaultDatabaseOptions, secret.metadata, lease.path, self.name)
        vault_lease = self._vault_lease(lease, opts)
        if vault_lease is None or not lease.issuer_state.get("renewable"):
            raise ConfigError(f"lease {lease.lease_id}: its Vault lease is not renewable")
        client, url, token = self._client(secret, opts)
        response = self._call(url, token, "PUT sys/leases/renew", client.sys.renew_lease,
                              lease_id=vault_lease, increment=int(ttl.total_seconds()))
        try:
            duration = int(response["lease_duration"])
        except (KeyError, TypeError, ValueError):
            raise BackendError(f"Vault at {url} answered sys/leases/renew without lease_duration") from None
        return utcnow() + timedelta(seconds=duration)

    def revoke(self, lease: Lease) -> None:
        with correlation.bound(lease.identity):  # Vault's audit log: the run that held the lease
            self._revoke(lease)

    def _revoke(self, lease: Lease) -> None:
        import hvac.exceptions

        secret = self.load_secret(lease.path)
        opts = issuer_options(VaultDatabaseOptions, secret.metadata, lease.path, self.name)
        vault_lease = self._vault_lease(lease, opts)
        if vault_lease is None:
            return
        client, url, token = self._client(secret, opts)
        doing = "PUT sys/leases/revoke"

        def attempt() -> bool:
            try:
                client.sys.revoke_lease(lease_id=vault_lease)
            except hvac.exceptions.Forbidden:
                return False
            return True

        if self._call(url, token, doing, attempt):
            return
        if lease.issuer_state.get("token_fingerprint") == token_fingerprint(token) and not self._token_alive(client):
            # The issuing token is gone, and Vault revoked every lease it created together with it.
            log.info("lease %s: Vault lease %s ended with its issuing token (expired or revoked)",
                     lease.lease_id, vault_lease)
            return
        raise BackendError(f"Vault at {url} refused {doing}: Forbidden: permission denied")

    def _token_alive(self, client: Any) -> bool:
        import hvac.exceptions
        import requests

        try:
            client.auth.token.lookup_self()
        except (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized):
            return False
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException):
            return True  # cannot tell: do not conclude the lease is gone
        return True
