"""Read Airflow secrets from where teams keep them today, as :class:`Candidate` items.

Sources (``runlease import SOURCE``):

- a file written by ``airflow connections export`` (``.json``, ``.yaml``/``.yml``,
  ``.env`` with URI or JSON serialization) or ``airflow variables export``
  (``.json``) -- the same shapes Airflow's ``LocalFilesystemBackend`` reads;
- a ``.env`` file with ``AIRFLOW_CONN_<ID>=...`` / ``AIRFLOW_VAR_<KEY>=...`` lines
  (other lines are reported as skipped, never imported by guesswork);
- ``env:``: the same variables in this process's environment;
- ``airflow-db:``: Airflow's metadata database, read through ``airflow
  connections export -`` and ``airflow variables export -`` in a subprocess
  (the Airflow installation and its AIRFLOW_HOME/config decide which database);
- ``vault:`` / ``aws:``: Vault or AWS Secrets Manager in the layout of
  Airflow's own VaultBackend / SecretsManagerBackend (:mod:`runlease.migrate.backends`).

A source is parsed completely before anything is written, so a file that does
not parse writes nothing. A single entry that does not parse becomes a
candidate with ``error`` set; the importer reports it as failed and goes on.
Error texts name the entry and the field, never a value: parser messages that
quote their input (YAML's do) are reduced to a line and column.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runlease.connection import connection_from_dict, parse_connection, sensitive_strings
from runlease.errors import BackendError, InvalidValueError, RunleaseError, SecretNotFoundError
from runlease.models import SecretValue

CONN_PREFIX = "AIRFLOW_CONN_"
VAR_PREFIX = "AIRFLOW_VAR_"
FILE_FORMATS = ("json", "yaml", "env")
KIND_CHOICES = ("auto", "connections", "variables")
#: Fields of ``airflow connections export`` that runlease does not store (not secret, not used to connect).
DROPPED_CONNECTION_FIELDS = ("description", "conn_id", "id", "is_encrypted", "is_extra_encrypted")
CONNECTION_FIELDS = frozenset({"conn_type", "host", "login", "password", "schema", "port", "extra",
                               *DROPPED_CONNECTION_FIELDS})


@dataclass
class Candidate:
    """One secret found in a source: where it came from and what it becomes (value hidden from repr)."""

    kind: str  # "connections" | "variables"
    name: str  # the Airflow conn_id / variable key
    origin: str  # e.g. "conns.json", "env:AIRFLOW_CONN_WH", "conns.env line 3"
    value: SecretValue | None = field(default=None, repr=False)
    error: str | None = None
    skip_reason: str | None = None


# -- values -------------------------------------------------------------------------


def connection_value(raw: Any) -> SecretValue:
    """A connection from an export entry: a dict (json/yaml export) or a URI / JSON string (env export)."""
    if isinstance(raw, str) and raw.strip().startswith("{"):
        # The env export's JSON serialization carries `description`, which the dict path drops.
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise InvalidValueError(f"invalid connection JSON at column {err.colno}") from None
    if isinstance(raw, str):
        return parse_connection(raw)
    if isinstance(raw, Mapping):
        return connection_from_dict({k: v for k, v in raw.items() if k not in DROPPED_CONNECTION_FIELDS})
    raise InvalidValueError(f"invalid connection: expected an object or a URI, got {type(raw).__name__}")


def variable_value(raw: Any) -> SecretValue:
    """Airflow variables are text; a JSON value from ``variables export`` is kept as its JSON text."""
    if isinstance(raw, str):
        return raw
    return json.dumps(raw)


def candidate(kind: str, name: str, origin: str, raw: Any) -> Candidate:
    """A candidate from one raw entry; a value that does not parse becomes the candidate's error."""
    try:
        value = connection_value(raw) if kind == "connections" else variable_value(raw)
    except RunleaseError as err:  # runlease's connection errors name fields, never values
        return Candidate(kind, name, origin, error=str(err))
    return Candidate(kind, name, origin, value=value)


# -- shapes -------------------------------------------------------------------------


def _looks_like_connections(mapping: Mapping[str, Any]) -> bool:
    """``connections export`` writes one object per conn_id with a ``conn_type`` key (or a URI string)."""
    values = list(mapping.values())
    if not values:
        return False
    for value in values:
        if isinstance(value, Mapping):
            if "conn_type" not in value or not set(value) <= CONNECTION_FIELDS:
                return False
        elif not (isinstance(value, str) and "://" in value):
            return False
    return True


def from_mapping(mapping: Any, origin: str, kind: str) -> list[Candidate]:
    """Candidates from a parsed json/yaml export (``kind`` auto-detects connections vs variables)."""
    if not isinstance(mapping, Mapping):
        raise InvalidValueError(f"{origin}: expected an object mapping ids to entries")
    if kind == "auto":
        kind = "connections" if _looks_like_connections(mapping) else "variables"
    return [candidate(kind, str(name), f"{origin} [{name}]", raw) for name, raw in mapping.items()]


def from_environ(environ: Mapping[str, str], origin: str) -> list[Candidate]:
    """``AIRFLOW_CONN_<ID>`` / ``AIRFLOW_VAR_<KEY>`` entries; Airflow upper-cases the id, so it is lower-cased back."""
    out = []
    for key in sorted(environ):
        raw = environ[key]
        if raw is None:
            continue
        if key.startswith(CONN_PREFIX) and len(key) > len(CONN_PREFIX):
            out.append(candidate("connections", key[len(CONN_PREFIX):].lower(), f"{origin}:{key}", raw))
        elif key.startswith(VAR_PREFIX) and len(key) > len(VAR_PREFIX):
            out.append(candidate("variables", key[len(VAR_PREFIX):].lower(), f"{origin}:{key}", raw))
    return out


def _read_dotenv(path: Path) -> dict[str, str | None]:
    from dotenv import dotenv_values

    return dict(dotenv_values(path, interpolate=False))


def from_env_file(path: Path, kind: str) -> list[Candidate]:
    """A ``.env`` file: AIRFLOW_CONN_/AIRFLOW_VAR_ lines, or an ``airflow connections export`` env file.

    A file with no AIRFLOW_ prefixed keys is read as Airflow's env export
    (``id=URI-or-JSON``; ``--kind variables`` for ``key=value`` variables).
    In a file that has such keys, every other line is skipped and reported.
    """
    entries = _read_dotenv(path)
    prefixed = [k for k in entries if k.startswith((CONN_PREFIX, VAR_PREFIX))]
    if prefixed:
        out = from_environ({k: v for k, v in entries.items() if k in prefixed and v is not None}, path.name)
        out += [Candidate("-", key, f"{path.name}:{key}",
                          skip_reason="not an AIRFLOW_CONN_* or AIRFLOW_VAR_* entry")
                for key in entries if key not in prefixed]
        return out
    target = "connections" if kind == "auto" else kind
    return [
        candidate(target, key, f"{path.name}:{key}", raw) if raw is not None
        else Candidate(target, key, f"{path.name}:{key}", error="no value (a line without '=')")
        for key, raw in entries.items()
    ]


def _load_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidValueError(f"{origin}: not valid JSON (line {err.lineno}, column {err.colno})") from None


def _load_yaml(text: str, origin: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        # str(err) quotes the offending line, which may hold a password: only the position.
        raise InvalidValueError(f"{origin}: not valid YAML{where}") from None


def file_format(path: Path, source_format: str | None) -> str:
    if source_format:
        if source_format not in FILE_FORMATS:
            raise InvalidValueError(f"--source-format {source_format!r}: expected one of {', '.join(FILE_FORMATS)}")
        return source_format
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("yaml", "yml"):
        return "yaml"
    if suffix == "json":
        return "json"
    if suffix == "env" or path.name.startswith(".env"):
        return "env"
    raise InvalidValueError(
        f"cannot tell the format of {path.name} from its name; give --source-format json|yaml|env"
    )


def from_file(path: Path, source_format: str | None, kind: str) -> list[Candidate]:
    if not path.is_file():
        raise SecretNotFoundError(f"source file {path} does not exist")
    fmt = file_format(path, source_format)
    if fmt == "env":
        return from_env_file(path, kind)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidValueError(f"cannot read {path}: {getattr(err, 'strerror', None) or type(err).__name__}") from None
    data = _load_json(text, path.name) if fmt == "json" else _load_yaml(text, path.name)
    if data is None:
        return []
    return from_mapping(data, path.name, kind)


# -- Airflow's metadata database ----------------------------------------------------


def airflow_executable() -> str:
    """``airflow`` next to this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).with_name("airflow")
    if beside.exists():
        return str(beside)
    found = shutil.which("airflow")
    if found is None:
        raise BackendError("airflow-db: no `airflow` command found (install Airflow or put it on PATH)")
    return found


def _airflow_export(args: list[str], what: str, timeout: float) -> Any:
    """Run an ``airflow ... export -`` command and parse its JSON from stdout (logs may precede it)."""
    try:
        proc = subprocess.run([airflow_executable(), *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BackendError(f"airflow-db: `airflow {' '.join(args)}` did not finish within {timeout:.0f}s") from None
    if proc.returncode != 0:
        # stderr is not shown: it could echo a connection the export choked on.
        raise BackendError(f"airflow-db: `airflow {' '.join(args)}` failed with exit {proc.returncode}; "
                           "run it yourself to see why")
    out = proc.stdout
    start = out.find("{")
    end = out.rfind("}")
    if start < 0 or end < start:
        return {}
    return _load_json(out[start:end + 1], f"airflow-db {what}")


def from_airflow_db(kind: str, timeout: float = 300) -> list[Candidate]:
    out: list[Candidate] = []
    if kind in ("auto", "connections"):
        conns = _airflow_export(["connections", "export", "-", "--file-format", "json"], "connections", timeout)
        out += from_mapping(conns, "airflow-db connections", "connections")
    if kind in ("auto", "variables"):
        variables = _airflow_export(["variables", "export", "-"], "variables", timeout)
        out += from_mapping(variables, "airflow-db variables", "variables")
    return out


#: Options that only mean something for one kind of source (``runlease import`` flag names).
VAULT_OPTIONS = ("mount_point", "kv_engine_version", "connections_path", "variables_path")
AWS_OPTIONS = ("connections_prefix", "variables_prefix", "sep")


def _refuse_options(source: str, given: Mapping[str, Any], allowed: Iterable[str]) -> None:
    stray = sorted(k for k, v in given.items() if v is not None and k not in allowed)
    if stray:
        names = {"mount_point": "mount", "kv_engine_version": "kv_version"}
        flags = ", ".join("--" + names.get(k, k).replace("_", "-") for k in stray)
        raise InvalidValueError(f"{flags}: not an option for the source {source}")


def read_source(source: str, *, source_format: str | None = None, kind: str = "auto",
                environ: Mapping[str, str] | None = None, env: str = "",
                source_options: str | None = None, layout: Mapping[str, Any] | None = None,
                defaults: Mapping[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[Candidate]:
    """Every candidate in ``source`` (see the module docstring for what SOURCE may be).

    ``env`` is the environment imported into, ``source_options`` a JSON object and
    ``layout`` the per-flag layout settings (both for ``vault:`` / ``aws:`` only);
    ``defaults`` are settings from runlease's own store (``backends.store_defaults``);
    ``progress(read, listed)`` is called after each entry a ``vault:``/``aws:`` source reads.
    """
    if kind not in KIND_CHOICES:
        raise InvalidValueError(f"--kind {kind!r}: expected one of {', '.join(KIND_CHOICES)}")
    layout = dict(layout or {})
    if source.startswith(("vault:", "aws:")):
        from runlease.migrate import backends

        options = backends.merged(dict(defaults or {}), backends.parse_source_options(source_options))
        if source.startswith("vault:"):
            _refuse_options(source, layout, VAULT_OPTIONS)
            return backends.from_vault(source, env, kind, options, layout, progress)
        _refuse_options(source, layout, AWS_OPTIONS)
        return backends.from_aws(source, kind, options, layout, progress)
    _refuse_options(source, {**layout, "source_options": source_options}, ())
    if source == "env:":
        found = from_environ(os.environ if environ is None else environ, "env")
        return [c for c in found if kind == "auto" or c.kind == kind]
    if source == "airflow-db:":
        return from_airflow_db(kind)
    if source.startswith(("aws-sm:", "ssm:")):
        raise InvalidValueError(f"{source.split(':', 1)[0]}: is not a source; for Secrets Manager give `aws:` "
                                "(SSM Parameter Store is not supported)")
    return from_file(Path(source), source_format, kind)


def sensitive_parts(candidates: Iterable[Candidate]) -> list[str]:
    """Every string an import must never print: whole values, passwords, sensitive extras."""
    out: list[str] = []
    for cand in candidates:
        if isinstance(cand.value, str):
            out.append(cand.value)
        elif isinstance(cand.value, dict):
            out += sensitive_strings(cand.value)
    return out
