"""``runlease serve`` and ``runlease server token create|list|revoke``.

The server's modules (FastAPI, uvicorn, PyJWT) are imported inside the
commands, so the rest of the CLI works without the ``server`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from runlease.cli.common import cli_errors, console, err_console, fail
from runlease.errors import ConfigError
from runlease.settings import Settings

server_app = typer.Typer(help="Manage what runlease serve accepts (admin tokens).", no_args_is_help=True)
token_app = typer.Typer(help="Admin tokens for operators and the CLI (stored as MACs in the home).",
                        no_args_is_help=True)
server_app.add_typer(token_app, name="token")


def _require_server_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import jwt  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"runlease serve needs the 'server' extra (pip install 'runlease[server]'): {err.name} "
                          "is missing") from None


@cli_errors
def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8443, "--port", help="TCP port"),
    oidc_issuer: Optional[str] = typer.Option(None, "--oidc-issuer", help="issuer (iss) of workload tokens"),
    oidc_audience: str = typer.Option("runlease", "--oidc-audience", help="audience (aud) workload tokens must name"),
    oidc_jwks: Optional[str] = typer.Option(None, "--oidc-jwks", help="the issuer's JWKS: a file or an http(s) URL"),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate (chain) to serve HTTPS"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
    allow_insecure_http: bool = typer.Option(
        False, "--allow-insecure-http", help="allow plain HTTP on a non-loopback address (TLS terminated in front)"),
    sweep_interval: float = typer.Option(60.0, "--sweep-interval", help="seconds between TTL sweeps (0: off)"),
    access_log: bool = typer.Option(False, "--access-log", help="log every request line"),
    broker_threads: Optional[bool] = typer.Option(
        None, "--broker-threads/--no-broker-threads",
        help="run broker calls in worker threads (default: only when the store or ledger is remote)"),
    jwks_ca: Optional[Path] = typer.Option(None, "--oidc-jwks-ca", help="CA bundle for an https --oidc-jwks URL"),
    jwks_token_file: Optional[Path] = typer.Option(
        None, "--oidc-jwks-token-file", help="bearer token file sent when fetching the JWKS URL"),
    jwks_refetch_interval: float = typer.Option(
        30.0, "--oidc-jwks-refetch-interval", help="least seconds between JWKS refetches for unknown key ids"),
) -> None:
    """Serve the broker over HTTP(S): workloads authenticate with an OIDC token and hold no key."""
    _require_server_extra()
    from runlease.server.serve import ServeOptions, serve

    options = ServeOptions(host=host, port=port, oidc_issuer=oidc_issuer, oidc_audience=oidc_audience,
                           oidc_jwks=oidc_jwks, tls_cert=tls_cert, tls_key=tls_key,
                           allow_insecure_http=allow_insecure_http, sweep_interval_s=sweep_interval,
                           access_log=access_log, jwks_refetch_interval_s=jwks_refetch_interval,
                           broker_threads=broker_threads, jwks_ca=jwks_ca, jwks_token_file=jwks_token_file)
    serve(Settings(), options)


def _tokens():  # type: ignore[no-untyped-def]
    from runlease.runtime import open_runtime
    from runlease.server.admin_tokens import AdminTokens

    settings = Settings().model_copy(update={"server": None})
    rt = open_runtime(settings)  # proves the KEK matches the home before a token is bound to it
    rt.close()
    return AdminTokens.of_home(settings.home, rt.keyring)


@token_app.command("create")
@cli_errors
def token_create(name: str = typer.Option(..., "--name", help="who the token is for (shown in the audit trail)"),
                 output: Optional[Path] = typer.Option(None, "--output", "-o",
                                                       help="write the token to this file (0600) instead of stdout")
                 ) -> None:
    """Create an admin token; it is shown once. The home keeps only its MAC."""
    entry, token = _tokens().create(name)
    if output is not None:
        import os

        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        err_console.print(f"admin token {entry.token_id} for {name} written to {output}")
    else:
        err_console.print(f"admin token {entry.token_id} for {name} (shown once; give it via RUNLEASE_TOKEN_FILE):")
        typer.echo(token)


@token_app.command("list")
@cli_errors
def token_list() -> None:
    """List admin tokens (id, name, creation time; never a token)."""
    for entry in _tokens().entries():
        console.print(f"{entry.token_id}  {entry.name}  {entry.created_at}")


@token_app.command("revoke")
@cli_errors
def token_revoke(name_or_id: str = typer.Argument(..., help="token id or name")) -> None:
    """Delete an admin token (a running server stops accepting it at its next request)."""
    n = _tokens().revoke(name_or_id)
    if not n:
        fail(f"no admin token named {name_or_id!r}", 4)
    console.print(f"revoked {n} admin token(s)")


def register(app: typer.Typer) -> None:
    app.command("serve", help="Serve the broker over HTTP(S) to workloads that hold no key.")(serve_command)
    app.add_typer(server_app, name="server")
