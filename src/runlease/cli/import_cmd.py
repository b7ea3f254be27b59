"""``runlease import SOURCE --env ENV``: bring existing Airflow connections and variables in.

See :mod:`runlease.migrate.sources` for what SOURCE may be and
:mod:`runlease.migrate.importer` for the check-and-set rules. Every value read
from the source is registered with the redactor before anything is written,
so no error line can carry one; the report lists paths and outcomes only.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runlease.cli.common import cli_errors, cli_identity, err_console, runtime
from runlease.cli.output import OutputFormat, emit, format_option, table, text
from runlease.migrate.importer import FAILED, Outcome, import_all, summary
from runlease.migrate.backends import store_defaults
from runlease.migrate.sources import read_source, sensitive_parts
from runlease.models import SecretPath
from runlease.redact import default_redactor
from runlease.settings import Settings

#: Imports with at least this many entries show a progress bar (on a terminal only).
PROGRESS_MIN = 20


def _bar(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=True)


class ReadingBar:
    """A "reading" bar for sources read entry by entry (vault:, aws:), shown once PROGRESS_MIN are listed."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Progress | None = None
        self.task: object = None

    def __enter__(self) -> "ReadingBar":
        return self

    def advance(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN:
            return
        if self.bar is None:
            self.bar = _bar("reading")
            self.bar.start()
            self.task = self.bar.add_task("read", total=total)
        self.bar.update(self.task, completed=done)  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def report_table(outcomes: list[Outcome], env: str, dry_run: bool) -> object:
    counts = summary(outcomes)
    title = (f"import into {env}{' (dry run: nothing written)' if dry_run else ''}: "
             + (", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing found"))
    tbl = table(title, ("source", "kind", "id", "path", "status", "version", "detail"))
    for o in outcomes:
        tbl.add_row(*map(text, (o.origin, o.kind, o.name, o.path or "-", o.status, o.version, o.detail)))
    return tbl


@cli_errors
def import_command(
    source: str = typer.Argument(
        ..., metavar="SOURCE", help="an `airflow connections export` / `airflow variables export` file (.json, .yaml, .env), a .env "
                  "file with AIRFLOW_CONN_*/AIRFLOW_VAR_* lines, `env:` (this environment), `airflow-db:` "
                  "(Airflow's metadata database via the airflow CLI), `vault:` / `vault:ADDRESS` (Airflow's "
                  "VaultBackend layout; VAULT_ADDR/BAO_ADDR and VAULT_TOKEN/BAO_TOKEN) or `aws:` (Airflow's "
                  "SecretsManagerBackend layout; region, credentials and endpoint from the AWS environment)"),
    env: str = typer.Option(..., "--env", help="the runlease environment to import into, e.g. prod"),
    source_format: Optional[str] = typer.Option(
        None, "--source-format", help="json | yaml | env: the file's format when its name does not say"),
    kind: str = typer.Option(
        "auto", "--kind", help="auto | connections | variables: what the file holds (auto: detected; a plain "
                               ".env export is read as connections); for env:, vault:, aws: which kinds to import "
                               "(auto: both)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="report what would be imported; write nothing"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="write a new version over an existing secret (check-and-set on its CURRENT)"),
    mount: Optional[str] = typer.Option(
        None, "--mount", help="vault: the KV mount Airflow's VaultBackend reads (its mount_point; default secret)"),
    kv_version: Optional[int] = typer.Option(
        None, "--kv-version", help="vault: 1 or 2, the KV engine version of the mount (kv_engine_version; default 2)"),
    connections_path: Optional[str] = typer.Option(
        None, "--connections-path", help="vault: the path under the mount holding connections (default "
                                         "connections; '' skips connections)"),
    variables_path: Optional[str] = typer.Option(
        None, "--variables-path", help="vault: the path under the mount holding variables (default variables; "
                                       "'' skips variables)"),
    connections_prefix: Optional[str] = typer.Option(
        None, "--connections-prefix", help="aws: the name prefix of connection secrets (default airflow/connections)"),
    variables_prefix: Optional[str] = typer.Option(
        None, "--variables-prefix", help="aws: the name prefix of variable secrets (default airflow/variables)"),
    sep: Optional[str] = typer.Option(
        None, "--sep", help="aws: the separator between prefix and id (SecretsManagerBackend's sep; default /)"),
    source_options: Optional[str] = typer.Option(
        None, "--source-options", help="vault:/aws: a JSON object: the Airflow backend's kwargs (mount_point, "
                                       "extra_conn_words, *_lookup_pattern, ...) and client settings (vault: "
                                       "address, namespace, auth; aws: region, endpoint_url, role_arn); no "
                                       "credentials inline (tokens come from the environment or files)"),
    fmt: OutputFormat = format_option(),
) -> None:
    """Import Airflow connections and variables into ENV; existing secrets are skipped unless --overwrite.

    Exit 0 when nothing failed, 1 when an entry failed (the others are still imported).
    """
    SecretPath.of(env, "connections", "probe")  # a bad --env is bad input before the source is read
    layout = {"mount_point": mount, "kv_engine_version": kv_version, "connections_path": connections_path,
              "variables_path": variables_path, "connections_prefix": connections_prefix,
              "variables_prefix": variables_prefix, "sep": sep}
    settings = Settings()
    bar_allowed = err_console.is_terminal and fmt is OutputFormat.table
    with ReadingBar(enabled=bar_allowed) as reading:
        candidates = read_source(source, source_format=source_format, kind=kind, env=env,
                                 source_options=source_options, layout=layout,
                                 defaults=store_defaults(source, settings.store, settings.store_options),
                                 progress=reading.advance)
    default_redactor().add_many(s for s in sensitive_parts(candidates) if s)
    who = cli_identity("import")
    show_bar = bar_allowed and len(candidates) >= PROGRESS_MIN
    with runtime() as rt:
        if show_bar:
            with _bar("importing") as bar:
                task = bar.add_task("import", total=len(candidates))
                outcomes = import_all(rt.broker, env, candidates, who, overwrite=overwrite, dry_run=dry_run,
                                      progress=lambda _o: bar.advance(task))
        else:
            outcomes = import_all(rt.broker, env, candidates, who, overwrite=overwrite, dry_run=dry_run)
    emit(fmt, (o.record() for o in outcomes), report_table(outcomes, env, dry_run))  # type: ignore[arg-type]
    if any(o.status == FAILED for o in outcomes):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
