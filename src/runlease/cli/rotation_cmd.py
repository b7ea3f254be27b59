"""``runlease rotate`` and ``runlease rotation set|status|retire``.

Rotation settings come from argv (``--setting KEY=VALUE``) because none of
them is secret: each rotator's settings model forbids unknown keys, so a
credential cannot be slipped in as a setting -- credentials are referenced
by the *path* of the secret that holds them (``admin=prod/connections/pg_admin``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Optional

import typer
from rich.table import Table

from runlease.cli.common import cli_errors, cli_identity, console, runtime
from runlease.cli.output import OutputFormat, emit, format_option, say, table, text
from runlease.cli.render import iso_time
from runlease.errors import InvalidValueError
from runlease.models import AuditEvent, Capability, SecretPath, utcnow
from runlease.rotation.engine import RotationEngine
from runlease.rotation.policy import RotationPolicy, parse_duration
from runlease.rotation.rotators import standard_rotators
from runlease.rotation.state import Status
from runlease.rotation.status import SecretRotation, scan

rotation_app = typer.Typer(help="Rotation policies, status and retirement (`runlease rotate PATH` rotates).",
                           no_args_is_help=True)

PathArg = typer.Argument(..., help="secret path <env>/<kind>/<name>")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (number, bool, object) is kept as such."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidValueError(f"--setting {item.partition('=')[0]!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def age(delta: timedelta) -> str:
    """``3d 4h``, ``2h 5m``, ``40s``: the two largest units, for a table cell."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return sign + " ".join(parts)


def due_text(row: SecretRotation, now: datetime) -> str:
    retire = row.retire_at()
    if retire is not None:
        return "retire now" if retire <= now else f"retire in {age(retire - now)}"
    due = row.due_at()
    if due is None:
        return "-"
    if row.state is not None and row.state.status is Status.ROTATING:
        return "now (resume)"
    return "now" if due <= now else f"in {age(due - now)}"


def status_table(rows: list[SecretRotation], now: datetime) -> Table:
    tbl = table("rotation status", ("secret", "rotator", "owner", "age of CURRENT", "due", "last result"))
    for row in rows:
        tbl.add_row(*map(text, (
            row.path, row.policy.rotator if row.policy else "?", row.owner or "-",
            age(now - row.current_created_at) if row.current_created_at else "-",
            due_text(row, now), row.last_result(),
        )))
    return tbl


def status_record(row: SecretRotation, now: datetime) -> dict[str, Any]:
    """One secret's rotation status for ``--format json`` (no values)."""
    state = row.state
    return {
        "path": str(row.path),
        "rotator": row.policy.rotator if row.policy else None,
        "owner": row.owner or None,
        "interval_s": row.policy.interval_s if row.policy else None,
        "grace_s": row.policy.grace_s if row.policy else None,
        "current_version": row.current_version,
        "current_created_at": iso_time(row.current_created_at),
        "age_s": int((now - row.current_created_at).total_seconds()) if row.current_created_at else None,
        "due_at": iso_time(row.due_at()),
        "due": row.is_due(now),
        "retire_at": iso_time(row.retire_at()),
        "retirable": row.is_retirable(now),
        "status": state.status.value if state is not None else None,
        "previous_version": state.previous_version if state is not None else None,
        "last_result": row.last_result(),
    }


@cli_errors
def rotate_command(
    path: str = PathArg,
    force: bool = typer.Option(False, "--force", help="end the previous rotation's grace period now if it runs"),
    token: Optional[str] = typer.Option(None, "--token", help="rotation token (idempotency key); resumes it if running"),
) -> None:
    """Rotate a secret now: create, set, test, finish (or resume an interrupted rotation)."""
    secret_path = SecretPath.parse(path)
    with runtime() as rt:
        state = RotationEngine(rt.broker).rotate(secret_path, cli_identity("rotate"), token, force=force)
    if state.status is Status.FAILED:
        say("rotation {} of {} had failed: {}", state.token, secret_path, state.reason)
        raise typer.Exit(10)
    console.print(f"rotated {secret_path}: v{state.pending_version} is CURRENT, v{state.previous_version} is "
                  f"PREVIOUS until retired (token {state.token})")


@rotation_app.command("set")
@cli_errors
def set_policy(
    path: str = PathArg,
    rotator: str = typer.Option(..., "--rotator", help="token | postgres | aws-iam-key | aws-secretsmanager"),
    interval: str = typer.Option(..., "--interval", help="rotate when CURRENT is this old, e.g. 30d"),
    grace: str = typer.Option("1h", "--grace", help="how long the replaced credential keeps working"),
    owner: str = typer.Option("", "--owner", help="who to ask about this secret"),
    setting: list[str] = typer.Option([], "--setting", help="KEY=VALUE rotator setting (repeatable)"),
) -> None:
    """Set a secret's rotation policy (validated against the rotator before anything is written)."""
    secret_path = SecretPath.parse(path)
    policy = RotationPolicy(rotator=rotator, interval_s=parse_duration(interval, "--interval"),
                            grace_s=parse_duration(grace, "--grace"), owner=owner, settings=parse_settings(setting))
    standard_rotators().get(rotator).check_settings(policy.settings, secret_path)
    with runtime() as rt:
        who = cli_identity("rotation-set")
        rt.broker.authorize(who, secret_path, Capability.ADMIN, "rotation-policy")
        with rt.ledger.atomic():
            rt.store.update_metadata(secret_path, policy.to_metadata())
            rt.ledger.append(AuditEvent.for_identity(
                who, action="rotation-policy", path=str(secret_path),
                detail={"rotator": rotator, "interval_s": policy.interval_s, "grace_s": policy.grace_s,
                        "owner": owner, "settings": sorted(policy.settings)},
            ))
    console.print(f"{secret_path}: rotates with {rotator} every {age(policy.interval)}, grace {age(policy.grace)}")


@rotation_app.command("status")
@cli_errors
def status(
    prefix: str = typer.Argument("", help="path prefix, e.g. prod/"),
    fmt: OutputFormat = format_option(),
) -> None:
    """Every secret with a rotation policy: owner, age of CURRENT, when due, last result."""
    with runtime() as rt:
        rows = scan(rt.store, prefix)
    now = utcnow()
    emit(fmt, (status_record(row, now) for row in rows), status_table(rows, now))


@rotation_app.command("retire")
@cli_errors
def retire(
    path: str = PathArg,
    force: bool = typer.Option(False, "--force", help="retire before the grace period is over"),
) -> None:
    """Disable the PREVIOUS credential of a finished rotation (after its grace period)."""
    secret_path = SecretPath.parse(path)
    with runtime() as rt:
        state = RotationEngine(rt.broker).retire(secret_path, cli_identity("rotation-retire"), force=force)
    if state is None or state.status is not Status.DONE:
        console.print(f"{secret_path}: nothing in its grace period to retire")
    else:
        console.print(f"{secret_path}: PREVIOUS v{state.previous_version} retired")


def register(app: typer.Typer) -> None:
    app.command("rotate")(rotate_command)
    app.add_typer(rotation_app, name="rotation")
