"""Start ``runlease serve``: open the home, check the listening options, run uvicorn.

Plain HTTP is refused on anything but a loopback address unless the
operator says ``--allow-insecure-http`` (e.g. behind a TLS-terminating mesh
sidecar): bearer tokens and leased credentials cross this connection.
"""

from __future__ import annotations

import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runlease.errors import ConfigError
from runlease.redact import install_redacting_filter
from runlease.runtime import open_runtime
from runlease.server.admin_tokens import AdminTokens
from runlease.server.auth import Authenticator
from runlease.server.metrics import ServerMetrics
from runlease.server.policy_view import ServerPolicy
from runlease.server.state import ServerState
from runlease.server.workload_tokens import DEFAULT_AUDIENCE, JwksSource, OidcSettings, WorkloadVerifier
from runlease.settings import Settings

#: Worker threads for broker calls when they do not run on the event loop.
BROKER_THREADS = 8


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8443
    oidc_issuer: str | None = None
    oidc_audience: str = DEFAULT_AUDIENCE
    oidc_jwks: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_insecure_http: bool = False
    sweep_interval_s: float = 60.0
    access_log: bool = False
    jwks_refetch_interval_s: float = 30.0
    jwks_ca: Path | None = None
    jwks_token_file: Path | None = None
    #: Run broker calls in worker threads (True), on the event loop (False), or decide (None):
    #: on the loop when store and ledger are the embedded SQLite file (writes serialize anyway).
    broker_threads: bool | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(options: ServeOptions) -> None:
    """Refuse a configuration that would expose tokens or values, naming the flag to fix."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", options.tls_cert), ("--tls-key", options.tls_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag} {path} does not exist")
    if options.tls_cert is None and not is_loopback(options.host) and not options.allow_insecure_http:
        raise ConfigError(
            f"refusing plain HTTP on {options.host}: tokens and credentials would cross the network in clear. "
            "Give --tls-cert/--tls-key, listen on 127.0.0.1, or pass --allow-insecure-http (TLS terminated in front)"
        )
    if (options.oidc_issuer is None) != (options.oidc_jwks is None):
        raise ConfigError("--oidc-issuer and --oidc-jwks go together (the issuer's key set verifies its tokens)")
    if not 0 < options.port < 65536:
        raise ConfigError(f"--port {options.port} is not a TCP port")


def build_state(settings: Settings, options: ServeOptions) -> ServerState:
    """Open the home (KEK, store, ledger, issuers) and the authenticators; nothing listens yet."""
    check_options(options)
    local = settings.model_copy(update={"server": None})  # the server itself never talks to a server
    runtime = open_runtime(local)
    try:
        runtime.broker.policy = ServerPolicy(runtime.policy)  # type: ignore[assignment]
    except BaseException:
        runtime.close()
        raise
    metrics = ServerMetrics()
    verifier = None
    if options.oidc_issuer is not None and options.oidc_jwks is not None:
        oidc = OidcSettings(issuer=options.oidc_issuer, jwks=options.oidc_jwks, audience=options.oidc_audience)
        verifier = WorkloadVerifier(oidc, source=JwksSource(
            options.oidc_jwks, min_refetch_interval=options.jwks_refetch_interval_s, ca_file=options.jwks_ca,
            token_file=options.jwks_token_file))
        verifier.source.refresh()  # a wrong --oidc-jwks fails at start, not on the first request
    admin = AdminTokens.of_home(local.home, runtime.keyring)
    authenticator = Authenticator(runtime.ledger, verifier, admin, on_failure=metrics.auth_failed)
    if options.broker_threads is None:
        inline = local.ledger == "local" and local.store == "local"
    else:
        inline = not options.broker_threads
    return ServerState(runtime=runtime, authenticator=authenticator, metrics=metrics,
                       oidc_issuer=options.oidc_issuer, sweep_interval_s=options.sweep_interval_s,
                       inline_broker=inline,
                       executor=None if inline else ThreadPoolExecutor(BROKER_THREADS, "runlease-broker"))


def serve(settings: Settings, options: ServeOptions) -> None:
    import uvicorn

    from runlease.server.app import create_app

    state = build_state(settings, options)
    try:
        app = create_app(state)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        config = uvicorn.Config(
            app, host=options.host, port=options.port,
            ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
            ssl_keyfile=str(options.tls_key) if options.tls_key else None,
            access_log=options.access_log, log_level="info", server_header=False, timeout_graceful_shutdown=10,
        )
        # uvicorn's handlers exist once its Config is built: mask every value this process has
        # served in whatever reaches them (a traceback of an unexpected error included).
        for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
            install_redacting_filter(state.broker.redactor, logging.getLogger(name))
        uvicorn.Server(config).run()
    finally:
        if state.executor is not None:
            state.executor.shutdown(wait=True)  # no broker call may still run while the runtime closes
        state.runtime.close()
