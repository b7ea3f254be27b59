"""What every CLI command shares: error handling, the runtime, the caller's identity, input.

Errors become one line on stderr and the error's own exit code, and the
line passes through the redactor first, so even an unexpected exception
cannot print a value the process has seen. Values are read from a file,
stdin or a hidden prompt, never from argv (argv shows up in ``ps`` and
shell history).
"""

from __future__ import annotations

import functools
import getpass
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from runlease.connection import parse_connection
from runlease.errors import InvalidValueError, RunleaseError
from runlease.models import RunIdentity, SecretPath, SecretValue
from runlease.redact import default_redactor
from runlease.runtime import Runtime, open_runtime
from runlease.settings import Settings

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"error: {default_redactor().redact(message)}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def cli_errors(func: F) -> F:
    """Turn runlease errors (and surprises) into one clear, redacted line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except RunleaseError as err:
            fail(str(err), err.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as err:  # noqa: BLE001 - last line of defence, still redacted
            setting = bad_setting(err)
            if setting is not None:
                fail(setting, 2)
            fail(f"unexpected {type(err).__name__}: {err}", 1)

    return wrapper  # type: ignore[return-value]


def bad_setting(err: Exception) -> str | None:
    """A malformed ``RUNLEASE_*`` variable, named without its value (options may hold addresses, paths...).

    pydantic-settings decodes JSON-valued settings (``RUNLEASE_STORE_OPTIONS``) before
    validation and raises ``SettingsError``; a well-formed value of the wrong type is a
    ``ValidationError`` whose text would echo the input, so neither is shown as is.
    """
    import re

    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(err, SettingsError):
        match = re.search(r'field "([A-Za-z_]+)"', str(err))
        name = f"RUNLEASE_{match.group(1).upper()}" if match else "a RUNLEASE_* variable"
        return f"{name} is not valid JSON (expected one JSON object; its value is not shown)"
    if isinstance(err, ValidationError) and err.title == "Settings":
        names = sorted({f"RUNLEASE_{str(e['loc'][0]).upper()}" for e in err.errors() if e.get("loc")})
        problems = "; ".join(f"{n}: {e['msg']}" for n, e in zip(names, err.errors()))
        return f"invalid setting(s) {problems or ', '.join(names)} (values not shown)"
    return None


@contextmanager
def runtime() -> Iterator[Runtime]:
    rt = open_runtime(Settings())
    try:
        yield rt
    finally:
        rt.close()


def cli_identity(command: str, **overrides: Any) -> RunIdentity:
    """The caller as the broker sees it: ``cli:<os user>:<command>`` unless a run is named.

    ``principal`` always stays the OS user, so an operator acting "as" a DAG
    run (``runlease lease --pipeline ...``) is still recorded as themself.
    """
    user = getpass.getuser()
    fields: dict[str, Any] = {"orchestrator": "cli", "pipeline": user, "task_id": command}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    fields["principal"] = f"cli:{user}"
    return RunIdentity(**fields)


def read_value_text(from_file: Path | None, use_stdin: bool, prompt: str) -> str:
    """The value's text from a file, stdin, or a hidden prompt (asked twice)."""
    if from_file is not None:
        try:
            text = from_file.read_text()
        except OSError as err:
            raise InvalidValueError(f"cannot read value file {from_file}: {err.strerror}") from None
    elif use_stdin or not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        text = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise InvalidValueError("empty value: nothing was written")
    return text


def parse_value(path: SecretPath, text: str, fmt: str) -> SecretValue:
    """Connections are Airflow URIs or JSON; every other kind is stored as text."""
    if path.kind != "connections":
        if fmt not in ("auto", "text"):
            raise InvalidValueError(f"--format {fmt} only applies to connections; {path} is a {path.kind} secret")
        return text
    if fmt == "json":
        stripped = text.strip()
        if not stripped.startswith("{"):
            raise InvalidValueError(f"value for {path} is not a JSON object")
        return parse_connection(stripped)
    if fmt == "uri":
        if text.strip().startswith("{"):
            raise InvalidValueError(f"value for {path} looks like JSON, not a URI (use --format json)")
        return parse_connection(text)
    if fmt not in ("auto",):
        raise InvalidValueError(f"unknown --format {fmt!r} (auto, uri, json, text)")
    return parse_connection(text)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
