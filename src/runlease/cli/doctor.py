"""``runlease doctor``: the checks an operator runs first when something looks wrong."""

from __future__ import annotations

import stat

import typer
from rich.text import Text

from runlease.cli.output import OutputFormat, emit, format_option, table, text
from runlease.errors import RunleaseError
from runlease.models import LeaseState, utcnow
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings

Check = tuple[str, bool, str]


def _mode(path: object) -> int:
    return stat.S_IMODE(path.stat().st_mode)  # type: ignore[attr-defined]


def _home_checks(settings: Settings) -> list[Check]:
    out: list[Check] = []
    home = settings.home
    if not home.exists():
        return [("home", False, f"{home} does not exist; run `runlease init`")]
    mode = _mode(home)
    out.append(("home permissions", not mode & 0o077, f"{home} mode {mode:04o} (want 0700)"))
    if settings.master_key is not None:
        out.append(("key source", True, "RUNLEASE_MASTER_KEY (environment)"))
    elif settings.key_file.exists():
        kmode = _mode(settings.key_file)
        out.append(("key file permissions", not kmode & 0o077, f"{settings.key_file} mode {kmode:04o} (want 0600)"))
        out.extend(_wrapping_checks(settings))
    else:
        out.append(("key source", False, f"no {settings.key_file} and no RUNLEASE_MASTER_KEY"))
    return out


def _wrapping_checks(settings: Settings) -> list[Check]:
    """What wraps the KEK in the key file (Vault Transit: which key, which Transit key versions)."""
    from runlease.keys.keyfile import transit_key_file_info

    try:
        transit = transit_key_file_info(settings.key_file)
    except RunleaseError as err:
        return [("key wrapping", False, str(err))]
    if transit is None:
        return []
    key, store_id, versions = transit
    shown = ", ".join(f"v{v}" if v is not None else "?" for v in versions)
    return [("key wrapping", None not in versions,
             f"{len(versions)} KEK(s) wrapped by Vault Transit key {key} (Transit key versions {shown}), "
             f"associated data runlease-store:{store_id}; opening the home needs {key.rpartition('/')[0]}/decrypt/"
             f"{key.rpartition('/')[2]} (`runlease key rotate` re-wraps under the latest Transit key version)")]


def _runtime_checks(rt: Runtime) -> list[Check]:
    conn = rt.db.connection()
    out: list[Check] = []
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    out.append(("store integrity", integrity == "ok", f"PRAGMA integrity_check: {integrity}"))
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    out.append(("journal mode", mode == "wal", f"{mode} (want wal)"))
    out.append(("master key", True, f"{rt.keyring.active_id} matches the store"))
    stale = {k: n for k, n in rt.local.kek_ids_in_use().items() if k != rt.keyring.active_id}
    out.append(("data keys", not stale,
                "all wrapped by the active key" if not stale
                else f"{sum(stale.values())} wrapped by older keys {sorted(stale)}: run `runlease key rotate`"))
    if rt.store is not rt.local:
        try:
            out.append(("remote store", True, rt.store.check()))  # type: ignore[attr-defined]
        except RunleaseError as err:
            out.append(("remote store", False, str(err)))
    bad_rows = rt.local.tampered_rows()
    bad_leases: list[str] = []
    rt.ledger.find_leases(tampered=bad_leases)
    bad = bad_rows + [f"leases {lease_id}" for lease_id in bad_leases]
    out.append(("row authentication", not bad,
                "every secret, version and lease row authenticates" if not bad
                else f"{len(bad)} row(s) changed without the key (never acted on): {', '.join(bad[:10])}"))
    result = rt.ledger.verify()
    out.append(("audit chain", result.ok, result.describe()))
    rolled_back = rt.local.check_secret_state()
    out.append(("secret rollback", not rolled_back, rolled_back or "every secret row is in its newest recorded state"))
    policy = rt.policy
    out.append(("policy", True, f"{len(policy.grants)} grant(s) from {policy.source}, deny by default"
                if policy.enforced else "no policy.toml: every principal may do everything"))
    overdue = rt.ledger.find_leases(state=LeaseState.ACTIVE, expired_before=utcnow())
    out.append(("lease expiry", not overdue,
                "no active lease past its TTL" if not overdue
                else f"{len(overdue)} active lease(s) past TTL: run `runlease sweep`"))
    return out


def doctor_command(fmt: OutputFormat = format_option()) -> None:
    """Check the home, key, store, audit chain and policy; exit 1 if anything is wrong."""
    settings = Settings()
    checks = _home_checks(settings)
    try:
        rt = open_runtime(settings)
    except RunleaseError as err:
        checks.append(("open store", False, str(err)))
    else:
        try:
            checks.extend(_runtime_checks(rt))
        finally:
            rt.close()
    tbl = table(f"runlease doctor ({settings.home})", ("check", "result", "detail"))
    for name, ok, detail in checks:
        tbl.add_row(text(name), Text("ok", style="green") if ok else Text("FAIL", style="red"), text(detail))
    emit(fmt, ({"check": name, "ok": ok, "detail": detail} for name, ok, detail in checks), tbl)
    if not all(ok for _, ok, _ in checks):
        raise typer.Exit(1)


__all__: list[str] = ["doctor_command"]
