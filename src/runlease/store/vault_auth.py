"""One authenticated Vault client per process: login, renewal, re-login only when the token is gone.

Why one session per process: every login creates a Vault token (and, for
AppRole, may consume a use-limited secret id). A task that resolves ten
connections must not log in ten times, so sessions are cached per
``(pid, options)`` and shared by every store and issuer in the process. The
pid is part of the key because a forked child (Airflow's LocalExecutor forks
task processes) must not share the parent's HTTP connection pool.

Lifecycle: the first request logs in; afterwards the token is renewed
(``renew-self``) once two thirds of its TTL have passed. Vault caps every
renewal at the token's max TTL; once a renewal comes back shorter than the
token's TTL (the cap is near), or the token is not renewable, the next
scheduled refresh is a fresh login instead -- still at two thirds of the
remaining TTL, so no request ever meets an expired token. A renewal Vault
refuses (HTTP 500 "past the max TTL", 403) is also replaced by a login.

A request answered with 403 is *not* taken as an expired token: Vault answers
403 both for a policy denial and for a dead token. runlease asks
``auth/token/lookup-self`` (in Vault's ``default`` policy): if the token is
alive, the 403 was a denial and becomes a :class:`StoreAccessDeniedError`
naming the address, the operation and the auth method, with no new login
(a denial must not burn a use-limited AppRole secret id or mint tokens);
only a dead token costs one fresh login and one retry.

Across processes: with a runlease home (and its KEK) at hand, the token a
login minted is also kept in the home, sealed under a key derived from the
KEK and bound to this address/namespace/auth method/role and login
credential (:mod:`runlease.store.vault_token_cache`), so the next task
process on the worker starts with it instead of a login -- as Vault Agent
does with its persisted auto-auth token. A cached token Vault no longer
honours is found the same way as an expired one (403, then ``lookup-self``)
and costs exactly one fresh login, which replaces the cached one.

Credentials are never accepted inline in ``RUNLEASE_STORE_OPTIONS`` (which
ends up in process listings, settings dumps and CI logs): tokens, secret ids
and JWTs come from files or named environment variables, and files are
re-read at every login because Kubernetes rotates projected service-account
tokens and CI systems mint a new ID token per job.

Vault API references (response shapes used here; the tests run against a real OpenBao server):
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
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from runlease.audit import correlation
from runlease.errors import ConfigError, StoreAccessDeniedError, StoreUnavailableError

if TYPE_CHECKING:
    from runlease.keys.crypto import Keyring
    from runlease.store.vault_token_cache import VaultTokenCache

T = TypeVar("T")

#: Where a pod's service-account token is mounted.
K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: Connections kept to the Vault server per process. requests' default is 10; a lookup uses up to two
#: at once (vault.py reads the value beside the state record) and the API server runs lookups on up to
#: 40 threads. Beyond it a connection is opened and dropped after use (never blocks).
HTTP_POOL_SIZE = 32
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

    #: ``https://vault.example:8200``; defaults to ``VAULT_ADDR`` (or OpenBao's ``BAO_ADDR``).
    address: str | None = None
    #: Vault Enterprise namespace (sent as ``X-Vault-Namespace``); defaults to ``VAULT_NAMESPACE``/``BAO_NAMESPACE``.
    namespace: str | None = None
    #: Seconds for connecting and for each response; every request is bounded by it.
    timeout: float = Field(default=10.0, gt=0, le=300)
    #: TLS verification: true, false, or a CA bundle path; defaults to ``VAULT_CACERT``/``BAO_CACERT`` when set.
    verify: bool | str | None = None
    auth: VaultAuthOptions = Field(default_factory=VaultAuthOptions)

    def resolved(self) -> "VaultClientOptions":
        """Fill address/namespace/verify from Vault's (or OpenBao's) standard environment variables."""
        address = self.address or env_setting("ADDR")
        if not address:
            raise ConfigError(
                "no Vault address: set RUNLEASE_STORE_OPTIONS {\"address\": ...}, VAULT_ADDR or BAO_ADDR")
        if not address.startswith(("http://", "https://")):
            raise ConfigError(f"Vault address {address!r} must start with http:// or https://")
        namespace = self.namespace if self.namespace is not None else env_setting("NAMESPACE")
        verify = self.verify
        source = "store option 'verify'"
        if verify is None:
            cacert = env_setting("CACERT")
            source = "VAULT_CACERT" if os.environ.get("VAULT_CACERT") else "BAO_CACERT"
            verify = cacert or True
        if isinstance(verify, str) and not Path(verify).is_file():
            raise ConfigError(f"Vault CA bundle {verify} (from {source}) does not exist or is not a file")
        return self.model_copy(update={"address": address.rstrip("/"), "namespace": namespace, "verify": verify})


def env_setting(name: str) -> str | None:
    """``VAULT_<name>``, else OpenBao's ``BAO_<name>`` (the same settings under its own prefix)."""
    return os.environ.get(f"VAULT_{name}") or os.environ.get(f"BAO_{name}") or None


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
    if env and env.startswith("VAULT_") and os.environ.get("BAO_" + env[6:]):
        return os.environ["BAO_" + env[6:]].strip()  # OpenBao's name for the same variable
    return None


def no_engine_mounted(err: Exception) -> bool:
    """Whether Vault's 404 means no secrets engine is mounted at the path ("no handler for route").

    Any other 404 is an absent secret or folder; this one is a wrong mount.
    """
    return any("no handler for route" in str(e) for e in (getattr(err, "errors", None) or []))


def http_status(err: Exception) -> int | None:
    """The HTTP status behind an hvac exception (hvac encodes it in the class only)."""
    import hvac.exceptions as hx

    for cls, code in ((hx.InvalidRequest, 400), (hx.Unauthorized, 401), (hx.Forbidden, 403),
                      (hx.InvalidPath, 404), (hx.RateLimitExceeded, 429), (hx.InternalServerError, 500),
                      (hx.VaultNotInitialized, 501), (hx.BadGateway, 502), (hx.VaultDown, 503)):
        if isinstance(err, cls):
            return code
    return None


def correlated_http_session(verify: bool | str, address: str) -> Any:
    """A requests.Session for ``address`` that stamps ``X-Correlation-ID`` on every request it sends.

    The environment's proxy settings (``HTTPS_PROXY``, ``NO_PROXY``, ...) and CA bundle
    (``REQUESTS_CA_BUNDLE``) are read once, here, for this address: with
    ``trust_env`` on, requests scans the whole environment twice per request, a
    third of a millisecond per Vault call on a worker's environment -- as much as
    the rest of a cached lookup.
    """
    import requests
    import requests.adapters
    import requests.utils

    class CorrelatedSession(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, headers: Any = None, **kwargs: Any) -> Any:
            merged = dict(headers or {})
            merged[correlation.HEADER] = correlation.current()
            return super().request(method, url, *args, headers=merged, **kwargs)

    session = CorrelatedSession()
    # Requests from several threads share this session (the Vault store reads a value beside its state
    # record; the API server serves lookups on a thread pool): keep enough connections to the one host.
    adapter = requests.adapters.HTTPAdapter(pool_connections=2, pool_maxsize=HTTP_POOL_SIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.proxies.update(requests.utils.get_environ_proxies(address))  # honours NO_PROXY for this address
    if verify is True:
        verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.verify = verify
    session.trust_env = False
    return session


class VaultSession:
    """An hvac client that is logged in, kept renewed, and logged in again only when its token is gone."""

    def __init__(self, options: VaultClientOptions, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.options = options.resolved()
        self.address: str = self.options.address  # type: ignore[assignment]
        self.auth = self.options.auth
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.RLock()
        self._client: Any = None
        self._generation = 0
        self._renew_at: float | None = None
        self._expires_at: float | None = None
        self._ttl: float | None = None
        self._renewable = False
        #: Set when Vault granted less than the token's TTL (its max TTL is near): log in next time.
        self._relogin_next = False
        #: Counters an operator (and the tests) can read: how often we logged in / renewed.
        self.logins = 0
        self.renewals = 0
        self.denials = 0
        #: Tokens taken from the home's token cache instead of a login.
        self.cached_tokens = 0
        #: The home's token cache (see use_token_cache); None: every process logs in.
        self.token_cache: VaultTokenCache | None = None
        #: Whether the current token may be written to the token cache (no num_uses limit).
        self._cacheable = False

    # -- public ---------------------------------------------------------------

    def prepare(self) -> None:
        """Build the HTTP client now (imports hvac and requests; no request is sent).

        Called by :meth:`VaultStore.prepare` when the Airflow backend is constructed,
        so its first lookup pays for the network and the lease only -- the same
        point at which Airflow's VaultBackend has its SDK ready (it imports hvac
        with its module). Logging in stays lazy: constructing a backend must not
        mint a token.
        """
        with self._lock:
            if self._client is None:
                self._client = self._new_client()

    def use_token_cache(self, home: Path, keyring: "Keyring") -> None:
        """Keep login tokens in ``home``, sealed under ``keyring``'s active KEK (see vault_token_cache).

        Only for methods that log in (a ``token``-method token is given, not minted).
        The first home attached wins: a session is per process and address, and a
        process opens one home.
        """
        from runlease.store.vault_token_cache import VaultTokenCache, identity_of

        if self.auth.method == "token":
            return
        with self._lock:
            if self.token_cache is not None:
                return
            role = self.auth.role_id if self.auth.method == "approle" else self.auth.role
            identity = identity_of(self.address, self.options.namespace, self.auth.method, self.auth.mount_path, role)
            self.token_cache = VaultTokenCache(home, keyring, identity, wall_clock=self._wall)

    def describe(self) -> str:
        ns = f" namespace {self.options.namespace}" if self.options.namespace else ""
        return f"Vault at {self.address}{ns} ({self.auth.method} auth at auth/{self.auth.mount_path})"

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)``. On 403: a live token means a denial (raised at once); a dead one, one re-login."""
        import hvac.exceptions as hx

        with self._lock:
            client = self._ensure(what)
            generation = self._generation
        try:
            return self._transport(what, lambda: fn(client))
        except (hx.Forbidden, hx.Unauthorized) as err:
            first = err
        with self._lock:
            if self._generation == generation:  # nobody re-logged in meanwhile
                if self._token_alive(client):
                    self.denials += 1
                    raise self._denied(what, first, relogin=False)
                if self.token_cache is not None:
                    self.token_cache.drop()  # dead: no other process should start with it
                self._login(what)
            client = self._client
        try:
            return self._transport(what, lambda: fn(client))
        except (hx.Forbidden, hx.Unauthorized) as err:
            self.denials += 1
            raise self._denied(what, err, relogin=True) from None

    def _denied(self, what: str, err: Exception, *, relogin: bool) -> StoreAccessDeniedError:
        after = " even after a fresh login" if relogin else " (the token is valid: this is the policy's answer)"
        return StoreAccessDeniedError(
            f"{self.describe()} denied {what} (HTTP {http_status(err)}){after}; "
            "check the Vault policy attached to runlease's role"
        )

    def _token_alive(self, client: Any) -> bool:
        """Is the token still valid? ``lookup-self`` is in Vault's default policy; a dead token gets 403."""
        import hvac.exceptions as hx

        if self._expires_at is not None and self._clock() >= self._expires_at:
            return False
        try:
            self._transport("looking up the token", lambda: client.auth.token.lookup_self())
        except (hx.Forbidden, hx.Unauthorized):
            return False
        return True

    # -- login and renewal ------------------------------------------------------

    def _ensure(self, what: str) -> Any:
        if self._client is None:
            self._client = self._new_client()
        if self._client.token is None or self._generation == 0:
            if not self._from_token_cache():
                self._login(what)
        elif self._renew_at is not None and self._clock() >= self._renew_at:
            self._renew(what)
        return self._client

    def _new_client(self) -> Any:
        try:
            import hvac
        except ImportError:
            raise ConfigError("the Vault store needs hvac: pip install 'runlease[vault]'") from None

        session = correlated_http_session(self.options.verify, self.address)  # type: ignore[arg-type]
        client = hvac.Client(
            url=self.address,
            token=None,
            verify=session.verify,
            timeout=self.options.timeout,
            session=session,
            namespace=self.options.namespace,
        )
        client.token = None  # hvac reads VAULT_TOKEN/~/.vault-token by default; we choose explicitly
        return client

    def _schedule(self, ttl: int | float | None, renewable: bool, *, login: bool) -> None:
        now = self._clock()
        if not ttl and not login:
            # A renewal granted nothing (the max TTL is reached): log in before the next request.
            self._relogin_next, self._renew_at = True, now
            return
        if ttl:
            ttl = float(ttl)
            if login:
                self._ttl = ttl
            elif self._ttl is not None and ttl < self._ttl:
                # Vault capped the renewal at the token's max TTL: renewing again would only shrink
                # further (then fail with 500, then 403). The next refresh is a fresh login instead.
                self._relogin_next = True
            self._renew_at = now + ttl * RENEW_FRACTION
            self._expires_at = now + ttl
        else:  # ttl 0: a token that never expires (e.g. a root or periodic-less token)
            self._renew_at = None
            self._expires_at = None
        self._renewable = bool(renewable)

    def _from_token_cache(self) -> bool:
        """Start with the home's cached token instead of a login; False when there is none to use."""
        cache = self.token_cache
        if cache is None:
            return False
        try:
            credential = self._login_credential()
        except ConfigError:
            return False  # the login reports it
        entry = cache.load(credential)
        if entry is None:
            return False
        now, wall = self._clock(), self._wall()
        self._client.token = entry.token
        self._expires_at = None if entry.expires_at is None else now + (entry.expires_at - wall)
        self._renew_at = None if entry.renew_at is None else now + (entry.renew_at - wall)
        self._ttl = entry.issued_ttl
        self._renewable = entry.renewable
        self._relogin_next = entry.relogin_next
        self._cacheable = True
        self.cached_tokens += 1
        self._generation += 1
        return True

    def _save_token(self) -> None:
        """Write the current token and its schedule to the home's cache (when there is one and it may be)."""
        cache = self.token_cache
        if cache is None or not self._cacheable or self._client is None or not self._client.token:
            return
        from runlease.store.vault_token_cache import CachedToken

        try:
            credential = self._login_credential()
        except ConfigError:
            return
        now, wall = self._clock(), self._wall()
        cache.save(CachedToken(
            token=self._client.token,
            expires_at=None if self._expires_at is None else wall + (self._expires_at - now),
            renew_at=None if self._renew_at is None else wall + (self._renew_at - now),
            issued_ttl=self._ttl, renewable=self._renewable, relogin_next=self._relogin_next,
        ), credential)

    def _login(self, what: str) -> None:
        import hvac.exceptions as hx

        client = self._client or self._new_client()
        self._client = client
        auth = self.auth
        mount = auth.mount_path
        self._relogin_next = False
        try:
            if auth.method == "token":
                token = _from_env_or_file(auth.token_env, auth.token_file, "Vault token")
                if not token:
                    raise ConfigError(
                        f"no Vault token: set {auth.token_env} (or BAO_TOKEN) or store_options.auth.token_file"
                    )
                client.token = token
                data = self._transport("looking up the token", lambda: client.auth.token.lookup_self(mount_point=mount))
                info = data.get("data") or {}
                self._schedule(info.get("ttl"), info.get("renewable", False), login=True)
            else:
                client.token = None  # a login request must not carry the token it replaces
                response = self._transport(f"logging in with {auth.method}", lambda: self._login_request(client))
                info = response.get("auth") or {}
                if not info.get("client_token"):
                    raise StoreAccessDeniedError(f"{self.describe()}: login returned no client token")
                client.token = info["client_token"]
                self._schedule(info.get("lease_duration"), info.get("renewable", False), login=True)
                # A use-limited token is never shared: another process would spend the uses this one counts on.
                self._cacheable = not info.get("num_uses")
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest, hx.InvalidPath) as err:
            client.token = None
            errors = "; ".join(str(e) for e in (err.errors or [])) or f"HTTP {http_status(err)}"
            raise StoreAccessDeniedError(f"{self.describe()}: login failed while {what}: {errors}") from None
        self.logins += 1
        self._generation += 1
        if auth.method != "token":
            self._save_token()

    def _login_credential(self) -> str | None:
        """What this process logs in with (AppRole secret id, service-account token, JWT), read afresh.

        Also what a cached token is bound to: a token minted for another credential
        (a rotated secret id, another workload's JWT) is never taken from the cache.
        """
        auth = self.auth
        if auth.method == "approle":
            return _from_env_or_file(auth.secret_id_env, auth.secret_id_file, "AppRole secret id")
        if auth.method == "kubernetes":
            return _read_secret_file(auth.jwt_file or Path(K8S_TOKEN_FILE), "Kubernetes service-account token")
        if auth.method == "jwt":
            jwt_value = _from_env_or_file(auth.jwt_env, auth.jwt_file, "JWT")
            if not jwt_value:
                raise ConfigError(f"no JWT for Vault jwt login: {auth.jwt_env or auth.jwt_file} is empty or unset")
            return jwt_value
        return None

    def _login_request(self, client: Any) -> dict[str, Any]:
        auth = self.auth
        mount = auth.mount_path
        credential = self._login_credential()
        if auth.method == "approle":
            return client.auth.approle.login(role_id=auth.role_id, secret_id=credential, mount_point=mount)
        if auth.method == "kubernetes":
            return client.auth.kubernetes.login(role=auth.role, jwt=credential, mount_point=mount)
        return client.auth.jwt.jwt_login(role=auth.role, jwt=credential, path=mount)

    def _renew(self, what: str) -> None:
        import hvac.exceptions as hx

        if not self._renewable or self._relogin_next:
            self._login(what)
            return
        client = self._client
        try:
            response = self._transport("renewing the token", lambda: client.auth.token.renew_self(),
                                       passthrough=(hx.InternalServerError,))
        except (hx.Forbidden, hx.Unauthorized, hx.InvalidRequest, hx.InternalServerError):
            # 500 "past the max TTL, cannot renew", or a token revoked meanwhile: a new login, not an error.
            self._login(what)
            return
        info = response.get("auth") or {}
        self._schedule(info.get("lease_duration"), info.get("renewable", False), login=False)
        self.renewals += 1
        self._save_token()  # the next process starts with the renewed schedule

    # -- transport errors ---------------------------------------------------------

    def _transport(self, what: str, fn: Callable[[], T], passthrough: tuple[type[Exception], ...] = ()) -> T:
        """Turn connection, TLS and 5xx failures into one clear error naming the address."""
        import hvac.exceptions as hx
        import requests

        try:
            return fn()
        except passthrough:
            raise
        except requests.exceptions.Timeout:
            raise StoreUnavailableError(
                f"{self.describe()} did not answer within {self.options.timeout:g}s while {what}"
            ) from None
        except requests.exceptions.SSLError as err:
            raise StoreUnavailableError(
                f"{self.describe()}: TLS handshake failed while {what} ({tls_reason(err)}); check the server "
                "certificate and the CA bundle (store option 'verify', VAULT_CACERT or BAO_CACERT)"
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


def tls_reason(err: Exception) -> str:
    """The TLS problem in a few words (certificate verify failed, wrong version, ...), nothing else."""
    text = str(err)
    for marker in ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "WRONG_VERSION_NUMBER",
                   "wrong version number", "hostname mismatch", "self-signed certificate", "self signed certificate",
                   "unable to get local issuer certificate", "certificate has expired"):
        if marker in text:
            return marker.lower().replace("_", " ")
    return "SSLError"


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
