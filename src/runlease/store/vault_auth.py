"""One authenticated Vault client per process: login, renewal, one re-login on 403.

Why one session per process: every login creates a Vault token (and, for
AppRole, may consume a use-limited secret id). A task that resolves ten
connections must not log in ten times, so sessions are cached per
``(pid, options)`` and shared by every store and issuer in the process. The
pid is part of the key because a forked child (Airflow's LocalExecutor forks
task processes) must not share the parent's HTTP connection pool.

Lifecycle: the first request logs in; afterwards the token is renewed
(``renew-self``) once two thirds of its TTL have passed, and replaced by a
fresh login when it is not renewable or renewal fails. A request answered
with 403 triggers exactly one fresh login and one retry (the token may have
been revoked or hit its max TTL); a second 403 is a policy problem and
becomes a :class:`StoreAccessDeniedError` naming the address, the operation
and the auth method.

Credentials are never accepted inline in ``RUNLEASE_STORE_OPTIONS`` (which
ends up in process listings, settings dumps and CI logs): tokens, secret ids
and JWTs come from files or named environment variables, and files are
re-read at every login because Kubernetes rotates projected service-account
tokens and CI systems mint a new ID token per job.

Vault API references (response shapes used here and in the test fake):
- token lookup-self / renew-self: https://developer.hashicorp.com/vault/api-docs/auth/token
- AppRole login: https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle
- Kubernetes login: https://developer.hashicorp.com/vault/api-docs/auth/kubernetes#login
- JWT/OIDC login: https://developer.hashicorp.com/vault/api-docs/auth/jwt#jwt-login
- namespaces (X-Vault-Namespace): https://developer.hashicorp.com/vault/docs/enterprise/namespaces
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runlease import correlation
from runlease.errors import ConfigError, StoreAccessDeniedError, StoreUnavailableError

T = TypeVar("T")

#: Where a pod's service-account token is mounted.
K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: Renew once this fraction of the token's TTL has passed.
RENEW_FRACTION = 2 / 3

_DEFAULT_MOUNTS = {"token": "token", "approle": "approle", "kubernetes": "kubernetes", "jwt": "jwt"}


class VaultAuthOptions(BaseModel):
    """How runlease logs in to Vault. Secrets come from files or environment variables only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["token", "approle", "kubernetes", "jwt"] = "token"
    #: Auth mount path; defaults to the method name (``auth/approle``, ...).
    mount: str | None = None
    #: token: environment variable and/or file holding the token.
    token_env: str = "VAULT_TOKEN"
    token_file: Path | None = None
    #: approle: the role id (not secret) and where the secret id comes from.
    role_id: str | None = None
    secret_id_env: str = "VAULT_SECRET_ID"
    secret_id_file: Path | None = None
    #: kubernetes / jwt: the Vault role and where the JWT comes from.
    role: str | None = None
    jwt_file: Path | None = None
    jwt_env: str | None = None

    @model_validator(mode="after")
    def _required(self) -> "VaultAuthOptions":
        if self.method == "approle" and not self.role_id:
            raise ValueError("auth.role_id is required for approle")
        if self.method in ("kubernetes", "jwt") and not self.role:
            raise ValueError(f"auth.role is required for {self.method}")
        if self.method == "jwt" and not (self.jwt_file or self.jwt_env):
            raise ValueError("auth.jwt_file or auth.jwt_env is required for jwt")
        return self

    @property
    def mount_path(self) -> str:
        return (self.mount or _DEFAULT_MOUNTS[self.method]).strip("/")


class VaultClientOptions(BaseModel):
    """Where Vault is and how to talk to it (shared by the store and Vault-backed issuers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``https://vault.example:8200``; defaults to ``VAULT_ADDR``.
    address: str | None = None
    #: Vault Enterprise namespace (sent as ``X-Vault-Namespace``); defaults to ``VAULT_NAMESPACE``.
    namespace: str | None = None
    #: Seconds for connecting and for each response; every request is bounded by it.
    timeout: float = Field(default=10.0, gt=0, le=300)
    #: TLS verification: true, false, or a CA bundle path; defaults to ``VAULT_CACERT`` when set.
    verify: bool | str | None = None
    auth: VaultAuthOptions = Field(default_factory=VaultAuthOptions)

    def resolved(self) -> "VaultClientOptions":
        """Fill address/namespace/verify from Vault's standard environment variables."""
        address = self.address or os.environ.get("VAULT_ADDR")
        if not address:
            raise ConfigError("no Vault address: set RUNLEASE_STORE_OPTIONS {\"address\": ...} or VAULT_ADDR")
        if not address.startswith(("http://", "https://")):
            raise ConfigError(f"Vault address {address!r} must start with http:// or https://")
        namespace = self.namespace if self.namespace is not None else os.environ.get("VAULT_NAMESPACE") or None
        verify = self.verify
        if verify is None:
            verify = os.environ.get("VAULT_CACERT") or True
        return self.model_copy(update={"address": address.rstrip("/"), "namespace": namespace, "verify": verify})


def _read_secret_file(path: Path, what: str) -> str:
    try:
        text = path.read_text().strip()
    except OSError as err:
        raise ConfigError(f"cannot read {what} from {path}: {err.strerror}") from None
    if not text:
        raise ConfigError(f"{what} file {path} is empty")
    return text


def _from_env_or_file(env: str | None, path: Path | None, what: str) -> str | None:
    if path is not None:
        return _read_secret_file(path, what)
    if env and os.environ.get(env):
        return os.environ[env].strip()
    return None


def http_status(err: Exception) -> int | None:
    """The HTTP status behind an hvac exception (hvac encodes it in the class only)."""
    import hvac.exceptions as hx

    for cls, code in ((hx.InvalidRequest, 400), (hx.Unauthorized, 401), (hx.Forbidden, 403),
                      (hx.InvalidPath, 404), (hx.RateLimitExceeded, 429), (hx.InternalServerError, 500),
                      (hx.VaultNotInitialized, 501), (hx.BadGateway, 502), (hx.VaultDown, 503)):
        if isinstance(err, cls):
            return code
    return None


def _correlated_http_session(verify: bool | str) -> Any:
    """A requests.Session that stamps ``X-Correlation-ID`` on every request it sends."""
    import requests

    class CorrelatedSession(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
            merged = dict(headers or {})
            merged[correlation.HEADER] = correlation.current()
            return super().request(method, url, *args, headers=merged, **kwargs)

    session = CorrelatedSession()
    session.verify = verify
    return session


class VaultSession:
    """An hvac client that is logged in, kept renewed, and re-logged in once on 403."""

    def __init__(self, options: VaultClientOptions, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options.resolved()
        self.address: str = self.options.address  # type: ignore[assignment]
        self.auth = self.options.auth
        self._clock = clock
        self._lock = threading.RLock()
        self._client: Any = None
        self._generation = 0
        self._renew_at: float | None = None
        self._renewable = False
        #: Counters an operator (and the tests) can read: how often we logged in / renewed.
        self.logins = 0
        self.renewals = 0

    # -- public ---------------------------------------------------------------

    def describe(self) -> str:
        ns = f" namespace {self.options.namespace}" if self.options.namespace else ""
        return f"Vault at {self.address}{ns} ({self.auth.method} auth at auth/{self.auth.mount_path})"

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)``; on 403 log in once more and retry once, then fail clearly."""
        import hvac.exceptions as hx

        with self._lock:
            client = self._ensure(what)
            generation = self._generation
        try:
            return self._transport(what, lambda: fn(client))
        except (hx.Forbidden, hx.Unauthorized):
            pass
        with self._lock:
            if self._generation == generation:  # nobody re-logged in meanwhile
                self._login(what)
            client = self._client
        try:
            return self._transport(what, lambda: fn(client))
        except (hx.Forbidden, hx.Unauthorized) as err:
            raise StoreAccessDeniedError(
                f"{self.describe()} denied {what} (HTTP {http_status(err)}) even after a fresh login; "
                "check the Vault policy attached to runlease's role"
            ) from None

    # -- login and renewal ------------------------------------------------------

    def _ensure(self, what: str) -> Any:
        if self._client is None:
            self._client = self._new_client()
        if self._client.token is None or self._generation == 0:
            self._login(what)
        elif self._renew_at is not None and self._clock() >= self._renew_at:
            self._renew(what)
        return self._client

    def _new_client(self) -> Any:
        import hvac

        client = hvac.Client(
            url=self.address,
            token=None,
            verify=self.options.verify,
            timeout=self.options.timeout,
            session=_correlated_http_session(self.options.verify),  # type: ignore[arg-type]
            namespace=self.options.namespace,
        )
        client.token = None  # hvac reads VAULT_TOKEN/~/.vault-token by default; we choose explicitly
        return client

    def _schedule(self, ttl: int | float | None, renewable: bool) -> None:
        now = self._clock()
        if ttl:
            self._renew_at = now + float(ttl) * RENEW_FRACTION
        else:  # ttl 0: a token that never expires (e.g. a root or periodic-less token)
            self._renew_at = None
        self._renewable = bool(renewable)

    def _login(self, what: str) -> None:
        import hvac.exceptions as hx

        client = self._client or self._new_client()
        self._client = client
        auth = self.auth
        mount = auth.mount_path
        try:
            if auth.method == "token":
                token = _from_env_or_file(auth.token_env, auth.token_file, "Vault token")
                if not token:
                    raise ConfigError(
                        f"no Vault token: set {auth.token_env} or store_options.auth.token_file"
                    )
                client.token = token
                data = self._transport("looking up the token", lambda: client.auth.token.lookup_self(mount_point=mount))
                info = data.get("data") or {}
                self._schedule(info.get("ttl"), info.get("renewable", False))
            else:
                client.token = None  # a login request must not carry the token it replaces
                response = self._transport(f"logging in with {auth.method}", lambda: self._login_request(client))
                info = response.get("auth") or {}
                if not info.get("client_token"):
                    raise StoreAccessDeniedError(f"{self.describe()}: login returned no client token")
                client.token = info["client_token"]
                self._schedule(info.get("lease_duration"), info.get("renewable", False))
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest, hx.InvalidPath) as err:
            client.token = None
            errors = "; ".join(str(e) for e in (err.errors or [])) or f"HTTP {http_status(err)}"
            raise StoreAccessDeniedError(f"{self.describe()}: login failed while {what}: {errors}") from None
        self.logins += 1
        self._generation += 1

    def _login_request(self, client: Any) -> dict[str, Any]:
        auth = self.auth
        mount = auth.mount_path
        if auth.method == "approle":
            secret_id = _from_env_or_file(auth.secret_id_env, auth.secret_id_file, "AppRole secret id")
            return client.auth.approle.login(role_id=auth.role_id, secret_id=secret_id, mount_point=mount)
        if auth.method == "kubernetes":
            jwt = _read_secret_file(auth.jwt_file or Path(K8S_TOKEN_FILE), "Kubernetes service-account token")
            return client.auth.kubernetes.login(role=auth.role, jwt=jwt, mount_point=mount)
        jwt_value = _from_env_or_file(auth.jwt_env, auth.jwt_file, "JWT")
        if not jwt_value:
            raise ConfigError(f"no JWT for Vault jwt login: {auth.jwt_env or auth.jwt_file} is empty or unset")
        return client.auth.jwt.jwt_login(role=auth.role, jwt=jwt_value, path=mount)

    def _renew(self, what: str) -> None:
        import hvac.exceptions as hx

        if not self._renewable:
            self._login(what)
            return
        client = self._client
        try:
            response = self._transport("renewing the token", lambda: client.auth.token.renew_self())
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest):
            self._login(what)
            return
        info = response.get("auth") or {}
        self._schedule(info.get("lease_duration"), info.get("renewable", False))
        self.renewals += 1

    # -- transport errors ---------------------------------------------------------

    def _transport(self, what: str, fn: Callable[[], T]) -> T:
        """Turn connection failures and 5xx answers into one clear error naming the address."""
        import hvac.exceptions as hx
        import requests

        try:
            return fn()
        except requests.exceptions.Timeout:
            raise StoreUnavailableError(
                f"{self.describe()} did not answer within {self.options.timeout:g}s while {what}"
            ) from None
        except requests.exceptions.ConnectionError as err:
            reason = type(err).__name__
            raise StoreUnavailableError(
                f"{self.describe()} is unreachable while {what} ({reason}); check the address and network"
            ) from None
        except (hx.VaultDown, hx.InternalServerError, hx.BadGateway, hx.RateLimitExceeded,
                hx.UnexpectedError, hx.VaultNotInitialized) as err:
            errors = "; ".join(str(e) for e in (err.errors or []))
            raise StoreUnavailableError(
                f"{self.describe()} answered HTTP {http_status(err) or 'error'} while {what}" + (f": {errors}" if errors else "")
            ) from None


_sessions: dict[tuple[int, str], VaultSession] = {}
_sessions_lock = threading.Lock()


def vault_session(options: VaultClientOptions) -> VaultSession:
    """The process-wide session for this address/namespace/auth (a new one after fork).

    Keyed on the connection fields only, so a store and a Vault-backed issuer
    (or two stores with different mounts) pointed at the same Vault share one login.
    """
    connection = VaultClientOptions.model_validate(
        {name: getattr(options, name) for name in VaultClientOptions.model_fields}
    ).resolved()
    key = (os.getpid(), connection.model_dump_json())
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            session = VaultSession(connection)
            _sessions[key] = session
        return session
