"""``runlease scan``: the command-line front of the scanner.

Exit codes are part of the interface (CI and pre-commit read them):
0 = no unsuppressed findings, 1 = findings, 2 = usage error (bad path, bad
option value, not a git work tree where one is needed, unreadable baseline).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .engine import ScanResult, apply_baseline, scan_targets
from .files import DEFAULT_MAX_BYTES, ScanUsageError, collect_targets, git_toplevel
from .history import scan_history
from .report import render_table, summary_line, to_json, to_sarif
from .suppress import DEFAULT_BASELINE, BaselineError, load_baseline, write_baseline

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


class OutputFormat(str, Enum):
    """Report formats."""

    table = "table"
    json = "json"
    sarif = "sarif"


def _usage_error(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]runlease scan: error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_USAGE)


def scan_command(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(help="Files or directories to scan. Default: the current git work tree."),
    ] = None,
    all_files: Annotated[
        bool, typer.Option("--all-files", help="Ignore .gitignore: walk directories on disk instead of asking git.")
    ] = False,
    git_history: Annotated[
        bool, typer.Option("--git-history", help="Scan the lines every commit reachable from HEAD added.")
    ] = False,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", case_sensitive=False, help="table, json or sarif.")
    ] = OutputFormat.table,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write the report to this file instead of stdout.")
    ] = None,
    baseline: Annotated[
        Optional[Path],
        typer.Option("--baseline", help=f"Baseline of accepted findings. Default: {DEFAULT_BASELINE} if present."),
    ] = None,
    no_baseline: Annotated[bool, typer.Option("--no-baseline", help="Report baselined findings too.")] = False,
    write_baseline_flag: Annotated[
        bool,
        typer.Option("--write-baseline", help="Record the current findings as accepted, then exit 0."),
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=0, help="Worker processes (0 = one per CPU).")
    ] = 1,
    max_file_size: Annotated[
        int, typer.Option("--max-file-size", min=1, help="Skip files larger than this many bytes.")
    ] = DEFAULT_MAX_BYTES,
) -> None:
    """Find credentials in DAGs, pipelines, notebooks, config and .env files."""
    cwd = Path.cwd()
    if git_history and all_files:
        raise _usage_error("--git-history reads git's history; it cannot be combined with --all-files")
    try:
        if git_history:
            top = git_toplevel(cwd)
            if top is None:
                raise ScanUsageError(f"--git-history needs a git work tree; {cwd} is not inside one")
            specs = []
            for raw in paths or []:
                full = (cwd / raw).resolve()
                if not full.exists():
                    raise ScanUsageError(f"path does not exist: {raw}")
                specs.append(full.relative_to(top.resolve()).as_posix() if full != top.resolve() else ".")
            result: ScanResult = scan_history(top, specs, max_bytes=max_file_size)
        else:
            targets = collect_targets(list(paths or []), all_files=all_files, cwd=cwd)
            result = scan_targets(targets, jobs=jobs, max_bytes=max_file_size)
    except ScanUsageError as exc:
        raise _usage_error(str(exc)) from None

    baseline_path = baseline if baseline is not None else _default_baseline(cwd)
    if write_baseline_flag:
        target = baseline_path or (git_toplevel(cwd) or cwd) / DEFAULT_BASELINE
        count = write_baseline(target, result.findings)
        Console(stderr=True).print(f"wrote {count} finding(s) to baseline {target}", highlight=False)
        raise typer.Exit(EXIT_CLEAN)
    if baseline_path is not None and not no_baseline:
        try:
            result = apply_baseline(result, load_baseline(baseline_path))
        except BaselineError as exc:
            raise _usage_error(str(exc)) from None

    try:
        _emit(result, output_format, output)
    except OSError as exc:
        raise _usage_error(f"cannot write the report to {output}: {exc.strerror or exc.__class__.__name__}") from None
    raise typer.Exit(EXIT_FINDINGS if result.findings else EXIT_CLEAN)


def _default_baseline(cwd: Path) -> Path | None:
    for directory in (cwd, git_toplevel(cwd)):
        if directory is not None and (directory / DEFAULT_BASELINE).is_file():
            return directory / DEFAULT_BASELINE
    return None


def _emit(result: ScanResult, output_format: OutputFormat, output: Path | None) -> None:
    """Write the report; ``--output`` into a folder that does not exist yet creates it
    (CI jobs write ``reports/runlease.sarif`` into a fresh checkout)."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    if output_format is OutputFormat.table:
        if output is not None:
            with output.open("w", encoding="utf-8") as handle:
                render_table(result, Console(file=handle, width=200, force_terminal=False))
        else:
            console = Console()
            if not console.is_terminal:
                console = Console(width=max(console.width, 200))  # CI logs: do not fold excerpts
            render_table(result, console)
        return
    text = to_json(result) if output_format is OutputFormat.json else to_sarif(result)
    if output is not None:
        output.write_text(text + "\n", encoding="utf-8")
        Console(stderr=True).print(summary_line(result), highlight=False, markup=False)
    else:
        sys.stdout.write(text + "\n")


def register(app: typer.Typer) -> None:
    """Add the ``scan`` command to ``app`` (the main ``runlease`` CLI calls this)."""
    app.command(name="scan", no_args_is_help=False)(scan_command)


def build_app() -> typer.Typer:
    """A standalone app whose only command is ``scan`` (``python -m runlease.scan``)."""
    app = typer.Typer(add_completion=False, help="runlease secret scanner", pretty_exceptions_enable=False)
    register(app)
    return app
