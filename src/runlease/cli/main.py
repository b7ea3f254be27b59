"""``runlease``: init, put, get, ls, history, delete, lease, leases, revoke, sweep, audit, key, doctor, rotate, import."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from runlease.cli import render
from runlease.cli.common import (
    cli_errors,
    cli_identity,
    console,
    err_console,
    fail,
    parse_value,
    read_value_text,
    runtime,
    to_json,
)
from runlease.cli.doctor import doctor_command
from runlease.cli.import_cmd import register as register_import
from runlease.cli.issuer_opts import check_issuer_metadata, parse_issuer_opts
from runlease.cli.output import OutputFormat, emit, format_option, print_table, say
from runlease.cli.policy_cmd import policy_app
from runlease.cli.rotation_cmd import register as register_rotation
from runlease.cli.server_cmd import register as register_server
from runlease.scan.cli import register as register_scan
from runlease.cli import listing
from runlease.connection import connection_to_uri
from runlease.keys.keyfile import prepend_new_key
from runlease.ledger.base import AuditQuery
from runlease.models import AuditEvent, LeaseState, SecretPath, Stage
from runlease.runtime import init_home, open_runtime
from runlease.settings import Settings

app = typer.Typer(
    name="runlease",
    help="Run-bound, short-lived, audited credentials. State lives in $RUNLEASE_HOME (default ~/.runlease).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
audit_app = typer.Typer(help="Show, verify and export the hash-chained audit trail.", no_args_is_help=True)
key_app = typer.Typer(help="Manage the key-encryption key.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(key_app, name="key")
app.add_typer(policy_app, name="policy")
register_scan(app)
register_rotation(app)
register_server(app)
register_import(app)
app.command("doctor", help="Check the home, key, store, audit chain and policy; exit 1 if anything is wrong.")(
    cli_errors(doctor_command)
)

PathArg = typer.Argument(..., help="secret path <env>/<kind>/<name>, e.g. prod/connections/warehouse")


@app.command()
@cli_errors
def init(
    kms_key_id: Optional[str] = typer.Option(
        None, "--kms-key-id", help="wrap the KEK with this AWS KMS key (id, ARN or alias); the key file holds only ciphertext"),
    kms_region: Optional[str] = typer.Option(None, "--kms-region", help="region of the KMS key (default: AWS config)"),
    kms_endpoint_url: Optional[str] = typer.Option(None, "--kms-endpoint-url", help="KMS endpoint override"),
    vault_transit_key: Optional[str] = typer.Option(
        None, "--vault-transit-key", metavar="MOUNT/KEY",
        help="wrap the KEK with this Vault Transit key; the key file holds only Transit ciphertext"),
    vault_transit_options: Optional[str] = typer.Option(
        None, "--vault-transit-options", metavar="JSON",
        help="how to reach Vault for the Transit key (address, namespace, verify, timeout, auth; no credentials); "
             "default: RUNLEASE_STORE_OPTIONS with the vault store, else VAULT_ADDR/VAULT_TOKEN (or BAO_*)"),
) -> None:
    """Create $RUNLEASE_HOME: a 0600 key file, the encrypted store and an example policy.

    With RUNLEASE_STORE=vault|aws the remote store is checked first; the home then
    holds the ledger (leases, audit chain) while values live in the remote store.
    """
    settings = Settings()
    if kms_key_id is not None and vault_transit_key is not None:
        fail("--vault-transit-key and --kms-key-id exclude each other: choose one key wrapper", 2)
    kms = None
    if kms_key_id is not None:
        from runlease.keys.kms import KmsKeyOptions

        from pydantic import ValidationError

        try:
            kms = KmsKeyOptions(key_id=kms_key_id, region=kms_region, endpoint_url=kms_endpoint_url)
        except ValidationError as err:
            flags = {"region": "--kms-region", "endpoint_url": "--kms-endpoint-url", "key_id": "--kms-key-id"}
            bad = ", ".join(flags.get(str(e["loc"][0]), str(e["loc"][0])) if e["loc"] else "?" for e in err.errors())
            fail(f"{bad}: not a valid AWS region / endpoint URL with scheme (e.g. eu-west-1, https://kms.local)", 2)
    elif kms_region or kms_endpoint_url:
        fail("--kms-region/--kms-endpoint-url need --kms-key-id", 2)
    transit = None
    if vault_transit_key is not None:
        from runlease.keys.vault_transit import transit_options

        raw: dict[str, Any] = settings.store_options if settings.store == "vault" else {}
        if vault_transit_options is not None:
            try:
                raw = json.loads(vault_transit_options)
            except ValueError:
                fail("--vault-transit-options is not valid JSON (its value is not shown)", 2)
            if not isinstance(raw, dict):
                fail("--vault-transit-options must be one JSON object", 2)
        transit = transit_options(vault_transit_key, raw)
    elif vault_transit_options is not None:
        fail("--vault-transit-options needs --vault-transit-key", 2)
    rt, created = init_home(settings, kms=kms, transit=transit)
    rt.close()
    if created:
        console.print(f"initialized runlease home at {settings.home}")
        source = "RUNLEASE_MASTER_KEY" if settings.master_key is not None else f"{settings.key_file} (mode 0600)"
        if kms is not None:
            source += f", wrapped by AWS KMS key {kms.key_id}"
        if transit is not None:
            source += f", wrapped by Vault Transit key {transit.key} at {transit.address}"
        console.print(f"  key:    {rt.keyring.active_id} from {source}")
        if rt.store is rt.local:
            console.print(f"  store:  {settings.store_file}")
        else:
            console.print(f"  store:  {getattr(rt.store, 'location', settings.store)}")
            console.print(f"  ledger: {settings.store_file} (leases and audit chain)")
        console.print(f"  policy: {settings.home / 'policy.example.toml'} (rename to policy.toml to enforce)")
    else:
        console.print(f"runlease home at {settings.home} is already initialized")


@app.command()
@cli_errors
def put(
    path: str = PathArg,
    from_file: Optional[Path] = typer.Option(None, "--from-file", "-f", help="read the value from this file"),
    stdin: bool = typer.Option(False, "--stdin", help="read the value from standard input"),
    fmt: str = typer.Option("auto", "--format", help="auto | uri | json (connections) | text"),
    cas: Optional[int] = typer.Option(None, "--cas", help="only write if CURRENT is this version (0: must not exist)"),
    pending: bool = typer.Option(False, "--pending", help="stage the new version as PENDING, not CURRENT"),
    issuer: Optional[str] = typer.Option(None, "--issuer", help="issuer for leases of this secret (default static)"),
    issuer_opt: list[str] = typer.Option(
        [], "--issuer-opt", help="KEY=VALUE issuer setting kept in metadata (repeatable), e.g. parent_role=reader",
    ),
) -> None:
    """Write a new version. The value comes from --from-file, stdin or a hidden prompt, never argv."""
    secret_path = SecretPath.parse(path)
    opts = parse_issuer_opts(issuer_opt)
    if opts and issuer is None:
        fail("--issuer-opt needs --issuer", 2)
    value = parse_value(secret_path, read_value_text(from_file, stdin, f"value for {path}"), fmt)
    with runtime() as rt:
        if issuer is not None:
            check_issuer_metadata(rt, secret_path, issuer, opts)
        stage = Stage.PENDING if pending else Stage.CURRENT
        # The settings go in with the write, so no reader sees the value under other settings (issue 16).
        metadata = {"issuer": issuer, **opts} if issuer is not None else None
        version = rt.broker.put(secret_path, value, cli_identity("put"), cas=cas, stage=stage, metadata=metadata)
    console.print(f"wrote {secret_path} version {version} ({stage.value})")


@app.command()
@cli_errors
def get(
    path: str = PathArg,
    version: Optional[int] = typer.Option(None, "--version", "-v", help="read this version instead of a stage"),
    stage: Stage = typer.Option(Stage.CURRENT, "--stage", case_sensitive=False,
                                help="read the version this stage label points to"),
    reveal: bool = typer.Option(False, "--reveal", help="print the plaintext value"),
    as_uri: bool = typer.Option(False, "--uri", help="with --reveal: print a connection as an Airflow URI"),
) -> None:
    """Show a secret, masked unless --reveal. Every read is audited."""
    secret_path = SecretPath.parse(path)
    with runtime() as rt:
        secret = rt.broker.read(secret_path, cli_identity("get"), kind=secret_path.kind, version=version,
                                stage=stage, revealed=reveal)
    if reveal:
        value = secret.value
        if as_uri and isinstance(value, dict):
            sys.stdout.write(connection_to_uri(value) + "\n")
        elif isinstance(value, str):
            sys.stdout.write(value + "\n")
        else:
            sys.stdout.write(to_json(value) + "\n")
        return
    print_table(render.value_table(f"{secret_path} v{secret.version} (masked; --reveal to show)",
                                   render.masked(secret.value)))


@app.command("ls")
@cli_errors
def list_secrets(
    prefix: str = typer.Argument("", help="path prefix, e.g. prod/ or prod/connections/"),
    all_: bool = typer.Option(False, "--all", help="include soft-deleted secrets"),
    fmt: OutputFormat = format_option(),
) -> None:
    """List secrets and where their stages point (metadata only, no values)."""
    with runtime() as rt:
        found = listing.list_secrets(rt.store, rt.broker, prefix, include_deleted=all_, actor=cli_identity("ls"))
    emit(fmt, [*map(render.secret_record, found.rows), *map(render.tampered_record, found.tampered)],
         render.secrets_table(found.rows, found.tampered))
    found.raise_if_tampered()


@app.command()
@cli_errors
def history(path: str = PathArg, fmt: OutputFormat = format_option()) -> None:
    """List a secret's versions and their stage labels."""
    secret_path = SecretPath.parse(path)
    with runtime() as rt:
        found = listing.secret_history(rt.store, rt.broker, secret_path, cli_identity("history"))
    emit(fmt, [*map(render.version_record, found.rows), *map(render.tampered_record, found.tampered)],
         render.history_table(str(secret_path), found.rows, found.tampered))
    found.raise_if_tampered()


@app.command()
@cli_errors
def delete(path: str = PathArg, yes: bool = typer.Option(False, "--yes", help="do not ask")) -> None:
    """Soft-delete a secret: reads and leases fail, history stays, a later put revives it."""
    secret_path = SecretPath.parse(path)
    if not yes and not typer.confirm(f"delete {secret_path}?"):
        fail("not confirmed; nothing deleted")
    with runtime() as rt:
        rt.broker.delete(secret_path, cli_identity("delete"), kind=secret_path.kind)
    console.print(f"deleted {secret_path}")


@app.command()
@cli_errors
def lease(
    path: str = PathArg,
    ttl: int = typer.Option(900, "--ttl", help="lease lifetime in seconds (at most RUNLEASE_MAX_TTL)"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="run id to bind the lease to"),
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="DAG id / pipeline name to bind the lease to"),
    task_id: Optional[str] = typer.Option(None, "--task-id", help="task id to bind the lease to"),
    try_number: Optional[int] = typer.Option(None, "--try-number", help="task try number to bind the lease to"),
    orchestrator: Optional[str] = typer.Option(None, "--orchestrator",
                                               help="orchestrator recorded with the lease (default cli)"),
    reveal: bool = typer.Option(False, "--reveal", help="print the credential as JSON"),
) -> None:
    """Lease a credential for a run (masked unless --reveal)."""
    secret_path = SecretPath.parse(path)
    identity = cli_identity("lease", orchestrator=orchestrator, pipeline=pipeline, run_id=run_id,
                            task_id=task_id, try_number=try_number)
    with runtime() as rt:
        granted = rt.broker.lease(secret_path, identity, ttl, kind=secret_path.kind)
    print_table(render.leases_table([granted], title="lease granted"))
    if reveal:
        sys.stdout.write(to_json(granted.value) + "\n")
    else:
        print_table(render.value_table("credential (masked)", render.masked(granted.value)))


@app.command()
@cli_errors
def leases(
    run_id: Optional[str] = typer.Option(None, "--run-id", help="only the leases of this run"),
    state: Optional[LeaseState] = typer.Option(None, "--state", case_sensitive=False,
                                               help="only leases in this state"),
    limit: int = typer.Option(200, "--limit", help="at most this many leases, newest first"),
    fmt: OutputFormat = format_option(),
) -> None:
    """List leases (no values)."""
    with runtime() as rt:
        found = listing.find_leases(rt.ledger, rt.broker, cli_identity("leases"), run_id=run_id, state=state,
                                    limit=limit)
    emit(fmt, [*map(render.lease_record, found.rows), *map(render.tampered_record, found.tampered)],
         render.leases_table(found.rows, tampered=found.tampered))
    found.raise_if_tampered()


@app.command()
@cli_errors
def revoke(
    lease_id: Optional[str] = typer.Argument(None, help="the lease to revoke"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="revoke every active lease of this run"),
    pipeline: Optional[str] = typer.Option(
        None, "--pipeline", help="with --run-id: only this DAG / pipeline (Airflow run ids repeat across DAGs)"),
    task_id: Optional[str] = typer.Option(None, "--task-id", help="with --run-id: only this task"),
    reason: str = typer.Option("revoked by operator", "--reason", help="why, recorded with the lease and in the audit trail"),
) -> None:
    """Revoke one lease, or every active lease of a run (of one pipeline, or one task of it)."""
    if (lease_id is None) == (run_id is None):
        fail("give exactly one of LEASE_ID or --run-id", 2)
    if (task_id is not None or pipeline is not None) and run_id is None:
        fail("--task-id and --pipeline need --run-id", 2)
    with runtime() as rt:
        who = cli_identity("revoke")
        if lease_id is not None:
            done = rt.broker.revoke(lease_id, reason, who)
            say("revoked {}" if done else "{} was not active; nothing to do", lease_id)
        else:
            assert run_id is not None
            n = rt.broker.revoke_where(reason, who, pipeline=pipeline, run_id=run_id, task_id=task_id)
            say("revoked {} lease(s) of run {}" + (" of {}" if pipeline else ""), n, run_id, *([pipeline] if pipeline else []))


@app.command()
@cli_errors
def sweep() -> None:
    """Expire every active lease past its TTL (run from cron as the backstop for killed tasks)."""
    with runtime() as rt:
        n = rt.broker.sweep_expired()
    console.print(f"expired {n} lease(s)")


RUN_HELP = "only events of this run id"
PATH_HELP = "only events about this secret path"
PRINCIPAL_HELP = "only events by this principal, e.g. cli:alice"
ACTION_HELP = "only events with this action, e.g. lease, read, write, revoke"


def _query(run_id: Optional[str], path: Optional[str], principal: Optional[str], action: Optional[str],
           limit: Optional[int]) -> AuditQuery:
    return AuditQuery(run_id=run_id, path=path, principal=principal, action=action, limit=limit)


@audit_app.command("show")
@cli_errors
def audit_show(
    run_id: Optional[str] = typer.Option(None, "--run-id", help=RUN_HELP),
    path: Optional[str] = typer.Option(None, "--path", help=PATH_HELP),
    principal: Optional[str] = typer.Option(None, "--principal", help=PRINCIPAL_HELP),
    action: Optional[str] = typer.Option(None, "--action", help=ACTION_HELP),
    limit: Optional[int] = typer.Option(None, "--limit", help="at most this many events"),
    fmt: OutputFormat = format_option(),
) -> None:
    """Show audit events (never values), filtered by run, path, principal or action."""
    with runtime() as rt:
        rows = list(rt.ledger.events(_query(run_id, path, principal, action, limit)))
    title = f"audit trail of run {run_id}" if run_id else "audit trail"
    emit(fmt, map(render.event_record, rows), render.audit_table(rows, title=title))


@audit_app.command("verify")
@cli_errors
def audit_verify(
    reanchor: bool = typer.Option(False, "--reanchor", help="after checking why the anchor is off: sign a new "
                                  "anchor at the chain's tip (only if the chain verifies; audited)"),
) -> None:
    """Check the hash chain and the signed anchor; report the first bad sequence number (exit 7)."""
    with runtime() as rt:
        remote = getattr(rt, "remote", False)  # through runlease serve: it checks its own home's state
        if reanchor and remote:
            fail("--reanchor needs the runlease home (run it where the server's home is)", 2)
        if reanchor:
            do = getattr(rt.ledger, "reanchor", None)
            if do is not None:
                old, new = do()
                console.print(f"re-anchored at event {new.seq} (previous anchor: "
                              f"{'none' if old is None else old.problem or f'event {old.seq}'})")
            # The secret state record, like the anchor: re-recorded from the rows as they are now, audited.
            before = rt.local.check_secret_state()
            rt.local.record_secret_state()
            rt.ledger.append(AuditEvent.for_identity(cli_identity("audit verify --reanchor"), action="secret_state_reset",
                                                     detail={"previous_problem": before[:200] or None}))
            console.print("secret state re-recorded from the current rows")
        # Through runlease serve the server runs the same two checks on its own home.
        result, rolled_back = (rt.ledger.verify(), "") if remote else rt.verify_audit()
    if not result.ok:
        fail(result.describe(), 7)
    if rolled_back:
        fail(rolled_back, 7)
    console.print(result.describe())


@audit_app.command("export")
@cli_errors
def audit_export(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write JSON lines here (default stdout)"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help=RUN_HELP),
    path: Optional[str] = typer.Option(None, "--path", help=PATH_HELP),
    principal: Optional[str] = typer.Option(None, "--principal", help=PRINCIPAL_HELP),
    action: Optional[str] = typer.Option(None, "--action", help=ACTION_HELP),
) -> None:
    """Export events as JSON lines (with seq, key id and chain value, for external archiving)."""
    with runtime() as rt:
        events = rt.ledger.events(_query(run_id, path, principal, action, None))
        sink = output.open("w") if output else sys.stdout
        count = 0
        try:
            for event in events:
                sink.write(event.model_dump_json() + "\n")
                count += 1
        finally:
            if output:
                sink.close()
    if output:
        err_console.print(f"exported {count} event(s) to {output}")


@key_app.command("rotate")
@cli_errors
def key_rotate() -> None:
    """Re-wrap every data key under a new KEK; payload ciphertext is not touched.

    With a key file, a new key is generated and prepended (old keys stay for
    reading and for verifying old audit events). With RUNLEASE_MASTER_KEY,
    prepend the new key there yourself, then run this to re-wrap.
    """
    settings = Settings()
    rt = open_runtime(settings)  # proves the current key matches before anything changes
    rt.close()
    if settings.master_key is None:
        prepend_new_key(settings.key_file)
    rt = open_runtime(settings)
    try:
        before = rt.local.kek_ids_in_use()
        with rt.ledger.atomic():
            n = rt.local.rewrap_all()
            rt.ledger.append(AuditEvent.for_identity(
                cli_identity("key-rotate"), action="key_rotate",
                detail={"active_key": rt.keyring.active_id, "rewrapped": n, "previous_keys": sorted(before)},
            ))
        console.print(f"active key {rt.keyring.active_id}; re-wrapped {n} data key(s)")
    finally:
        rt.close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
