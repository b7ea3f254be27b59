"""How a listing reaches stdout: a Rich table, one JSON array, or JSON lines.

Every listing command builds *records* (plain dicts, no values) and a table
from them, then hands both to :func:`emit`, so ``--format json`` carries
exactly the fields the table shows and more, never less.

Tables on a terminal fit the terminal. When stdout is a pipe or a file they
are printed on a console far wider than any row with ``no_wrap`` columns, so
an id is never folded over two lines and ``grep RUN_ID`` finds every row.

Cells are :class:`rich.text.Text`, never markup strings: a run id or task id
is chosen by whoever writes the DAG, and ``evil[/]`` must print as itself
rather than crash the renderer or restyle the output.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from runlease.cli.common import console

#: Width of the console tables are printed on when stdout is not a terminal.
PIPE_WIDTH = 100_000


class OutputFormat(str, enum.Enum):
    """``--format`` of every listing."""

    table = "table"
    json = "json"
    jsonl = "jsonl"


FORMAT_HELP = "table (default; unwrapped when piped), json (one array) or jsonl (one object per line)"


def format_option() -> Any:
    """The ``--format`` option every listing takes."""
    return typer.Option(OutputFormat.table, "--format", case_sensitive=False, help=FORMAT_HELP)


def text(value: Any) -> Text:
    """A table cell that is printed literally (no markup, no emoji codes)."""
    return Text("" if value is None else str(value))


def table(title: str | None, columns: Sequence[str]) -> Table:
    """A table whose columns never wrap when piped (the console decides, see :func:`table_console`)."""
    out = Table(title=escape(title) if title else None)
    for col in columns:
        out.add_column(col, overflow="fold")
    return out


def table_console() -> Console:
    """The shared console on a terminal; a very wide one otherwise, so rows stay on one line."""
    if console.is_terminal:
        return console
    return Console(highlight=False, width=PIPE_WIDTH, no_color=True, soft_wrap=False, emoji=False)


def _unwrapped(tbl: Table) -> Table:
    tbl.title_justify = "left"
    for column in tbl.columns:
        column.no_wrap = True
        column.overflow = "ignore"
    return tbl


def print_table(tbl: Table) -> None:
    out = table_console()
    if out is not console:
        tbl = _unwrapped(tbl)
    out.print(tbl)


def emit(fmt: OutputFormat, records: Iterable[dict[str, Any]], tbl: Table | None) -> None:
    """Print a listing in the chosen format; ``tbl`` is only built for ``table``.

    A reader that stops early (``| head``) is not an error: the rest is dropped quietly.
    """
    try:
        _emit(fmt, records, tbl)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit; point stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None


def _emit(fmt: OutputFormat, records: Iterable[dict[str, Any]], tbl: Table | None) -> None:
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(list(records), indent=2, default=str))
    elif fmt is OutputFormat.jsonl:
        for record in records:
            typer.echo(json.dumps(record, default=str, separators=(",", ":")))
    else:
        assert tbl is not None
        print_table(tbl)


def say(template: str, *args: Any) -> None:
    """A one-line message whose ``{}`` fields are user-controlled (escaped before Rich sees them)."""
    console.print(template.format(*(escape(str(a)) for a in args)), soft_wrap=True)
