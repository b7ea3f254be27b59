"""Import sources in the layout of Airflow's own secrets backends: ``vault:`` and ``aws:``.

Why these two: a team that used ``VaultBackend`` (hashicorp provider) or
``SecretsManagerBackend`` (Amazon provider) has its connections and variables
there, and must be able to move them with one command per source. The
parsing is the one the runlease readers of those layouts use
(:mod:`runlease.store.vault_airflow`, :mod:`runlease.store.aws_airflow`), so an
imported secret is exactly what the Airflow backend fallback would have
served.

Both *list* what is under the layout's paths/prefixes (Vault: LIST on the KV
metadata path, one level; AWS: ListSecrets with a name filter on the prefix)
and read each entry. Every entry is read before anything is written (as for
files); an entry that does not parse becomes a failed candidate, and errors
name the entry and the field, never a value. Options:

- ``vault:`` -- Vault's address, namespace and CA from ``VAULT_ADDR``/``BAO_ADDR``
  (``VAULT_NAMESPACE``, ``VAULT_CACERT``), the token from ``VAULT_TOKEN``/``BAO_TOKEN``;
  ``vault:https://vault.example:8200`` names the address. ``--source-options``
  takes runlease's Vault client options (``address``, ``namespace``, ``verify``,
  ``timeout``, ``auth``: AppRole, Kubernetes, JWT) and the layout in VaultBackend's
  names (``mount_point``, ``kv_engine_version``, ``connections_path``,
  ``variables_path``), which ``--mount`` etc. override.
- ``aws:`` -- region, credentials and endpoint from the standard AWS chain
  (``AWS_REGION``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_SECRETS_MANAGER``, ...);
  ``--source-options`` takes SecretsManagerBackend's kwargs
  (``connections_prefix``, ``variables_prefix``, ``sep``, ``extra_conn_words``,
  ``*_lookup_pattern``) plus runlease's AWS client options (``region``,
  ``endpoint_url``, ``role_arn``, ...; also accepted under ``client``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from runlease.errors import BackendError, InvalidValueError, RunleaseError, SecretNotFoundError
from runlease.errors import StoreUnavailableError
from runlease.migrate.sources import Candidate, candidate
from runlease.models import SecretPath

#: Called as ``(entries read, entries listed)`` after each entry is read (the CLI's progress bar).
Progress = Callable[[int, int], None]
#: The kinds the importer brings in (Airflow's ``config`` secrets are not runlease's to hold).
KINDS = ("connections", "variables")


def _errors(err: ValidationError, where: str) -> InvalidValueError:
    """A validation error naming the fields only (pydantic's text would quote the input)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in err.errors()]
    return InvalidValueError(f"{where}: " + "; ".join(parts))


def parse_source_options(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidValueError(f"--source-options: not valid JSON (column {err.colno})") from None
    if not isinstance(data, dict):
        raise InvalidValueError("--source-options: expected a JSON object")
    return data


def store_defaults(source: str, store: str, store_options: dict[str, Any]) -> dict[str, Any]:
    """Source settings taken from runlease's own store when it is the same kind of system.

    ``vault:`` with ``RUNLEASE_STORE=vault``: the store's address, namespace, TLS,
    timeout and auth -- not its mount, prefix or ``airflow_layout`` (a store that
    already serves Airflow's layout reports those IDs as existing). ``aws:`` with
    ``RUNLEASE_STORE=aws``: the store's AWS client settings (region, endpoint,
    role, ...), not its prefix. ``--source-options`` and the flags override them.
    """
    if source.startswith("vault:") and store == "vault":
        from runlease.store.vault_auth import VaultClientOptions

        return {k: v for k, v in store_options.items() if k in VaultClientOptions.model_fields}
    if source == "aws:" and store == "aws":
        from runlease.clients.awsclient import AwsConnectionOptions

        return {k: v for k, v in store_options.items() if k in AwsConnectionOptions.model_fields}
    return {}


def merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``, a setting named by either of its names replacing the default."""
    from runlease.store.vault_airflow import VAULT_BACKEND_NAMES

    out = dict(defaults)
    for names in ({alias, name} for alias, name in VAULT_BACKEND_NAMES.items()):
        if names & set(given):
            for name in names:
                out.pop(name, None)
    out.update(given)
    return out


def _split(options: dict[str, Any], model: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys ``model`` knows, and the rest."""
    mine = {k: v for k, v in options.items() if k in model.model_fields}
    return mine, {k: v for k, v in options.items() if k not in mine}


def _wanted(kind: str) -> tuple[str, ...]:
    return KINDS if kind == "auto" else (kind,)


# -- Vault (Airflow's VaultBackend layout) ----------------------------------------------


def vault_layout_and_client(source: str, env: str, options: dict[str, Any], overrides: dict[str, Any]) -> tuple[Any, Any]:
    """The :class:`AirflowLayout` and :class:`VaultClientOptions` for a ``vault:`` source."""
    from runlease.store.vault_airflow import VAULT_BACKEND_NAMES, AirflowLayout
    from runlease.store.vault_auth import VaultClientOptions

    client_fields, layout_fields = _split(options, VaultClientOptions)
    for alias, name in VAULT_BACKEND_NAMES.items():  # the flags' names win over the same setting in --source-options
        if alias in overrides and overrides[alias] is not None:
            layout_fields.pop(name, None)
            layout_fields.pop(alias, None)
    address = source.split(":", 1)[1]
    if address:
        if not address.startswith(("http://", "https://")):
            raise InvalidValueError(f"{source}: after 'vault:' give nothing or the address (https://host:8200)")
        client_fields["address"] = address
    try:
        client = VaultClientOptions.model_validate(client_fields)
    except ValidationError as err:
        raise _errors(err, "--source-options (Vault client)") from None
    layout_fields.update({k: v for k, v in overrides.items() if v is not None})
    layout_fields["config_path"] = None  # Airflow's config secrets are not imported
    try:
        layout = AirflowLayout.from_vault_backend_kwargs(layout_fields, env)
    except ValidationError as err:
        raise _errors(err, "Vault layout (--mount, --kv-version, --connections-path, --variables-path)") from None
    except ValueError as err:
        raise InvalidValueError(f"--source-options (Vault layout): {err}") from None
    return layout, client


def _vault_list(layout: Any, session: Any, folder: str) -> list[str]:
    from runlease.store.vault_airflow import list_keys

    keys = list_keys(layout, folder, session.call)
    if keys is None:
        raise SecretNotFoundError(f"Vault has no secrets engine mounted at {layout.mount!r} "
                                  "(--mount / mount_point)")
    return sorted(keys)


def _as_source_error(err: StoreUnavailableError) -> BackendError:
    """Vault/AWS here is the system imported *from*, not runlease's store: exit 9, same message."""
    return BackendError(f"import source unusable: {err}")


def from_vault(source: str, env: str, kind: str, options: dict[str, Any], overrides: dict[str, Any],
               progress: Progress | None = None) -> list[Candidate]:
    """Every connection/variable under the layout's paths, as Airflow's VaultBackend would read it."""
    from runlease.store.vault_auth import VaultSession

    layout, client = vault_layout_and_client(source, env, options, overrides)
    session = VaultSession(client.resolved())
    try:
        return _read_vault(layout, session, kind, progress)
    except StoreUnavailableError as err:
        raise _as_source_error(err) from None


def _read_vault(layout: Any, session: Any, kind: str, progress: Progress | None) -> list[Candidate]:
    from runlease.store.vault_airflow import read_entry, to_value

    listed = [(secret_type, base, key) for secret_type in _wanted(kind)
              if (base := getattr(layout, f"{secret_type}_path"))
              for key in _vault_list(layout, session, base)]
    out: list[Candidate] = []
    for done, (secret_type, base, key) in enumerate(listed, 1):
        origin = f"vault:{layout.mount}/{base}/{key}"
        if key.endswith("/"):
            out.append(Candidate(secret_type, key, origin, skip_reason=(
                "a folder; Airflow IDs in sub-folders are not imported (give --"
                f"{secret_type}-path {base}/{key.rstrip('/')} to import them)")))
        else:
            out.append(_vault_candidate(layout, session, secret_type, key, f"{base}/{key}", origin,
                                        read_entry, to_value))
        if progress is not None:
            progress(done, len(listed))
    return out


def _vault_candidate(layout: Any, session: Any, secret_type: str, key: str, kv_path: str, origin: str,
                     read_entry: Any, to_value: Any) -> Candidate:
    try:
        path = SecretPath.of(layout.env, secret_type, key)
    except RunleaseError as err:
        return Candidate(secret_type, key, origin, error=str(err))
    try:
        found = read_entry(layout, kv_path, session.call)
        if found is None:  # deleted between LIST and read (KV v2 soft delete keeps the key listed)
            return Candidate(secret_type, key, origin, skip_reason="no current version (deleted or destroyed)")
        version, data, _meta = found
        raw = to_value(path, version, f"Vault {layout.mount}/{kv_path}", data)
    except InvalidValueError as err:
        return Candidate(secret_type, key, origin, error=str(err))
    return candidate(secret_type, key, origin, raw)


# -- AWS Secrets Manager (Airflow's SecretsManagerBackend layout) -------------------------


def aws_reader(source: str, options: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The shared layout reader (:class:`runlease.store.aws_airflow.AirflowLayoutSource`) for an ``aws:`` source."""
    from runlease.clients.awsclient import AwsConnectionOptions, AwsService
    from runlease.store.aws_airflow import AirflowLayoutSource, LayoutOptions

    if source != "aws:":
        raise InvalidValueError(f"{source}: give `aws:`; region and endpoint come from the AWS environment or "
                                "--source-options {\"region\": ..., \"endpoint_url\": ...}")
    layout_fields, client_fields = _split(options, LayoutOptions)
    client_fields = {**(layout_fields.pop("client", None) or {}), **client_fields}
    layout_fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        layout = LayoutOptions.model_validate(layout_fields)
    except ValidationError as err:
        raise _errors(err, "AWS layout (--connections-prefix, --variables-prefix, --sep, --source-options)") from None
    try:
        client = AwsConnectionOptions.model_validate(client_fields)
    except ValidationError as err:
        raise _errors(err, "--source-options (AWS client)") from None
    return AirflowLayoutSource(layout, AwsService("secretsmanager", client, label="AWS Secrets Manager (import)"))


def from_aws(source: str, kind: str, options: dict[str, Any], overrides: dict[str, Any],
             progress: Progress | None = None) -> list[Candidate]:
    """Every connection/variable under the layout's prefixes, as Airflow's SecretsManagerBackend would read it."""
    reader = aws_reader(source, options, overrides)
    try:
        return _read_aws(reader, kind, progress)
    except StoreUnavailableError as err:
        raise _as_source_error(err) from None


def _read_aws(reader: Any, kind: str, progress: Progress | None) -> list[Candidate]:
    listed = [(secret_type, secret_id, name) for secret_type in _wanted(kind)
              for secret_id, name in reader.list_ids(secret_type)]
    out: list[Candidate] = []
    for done, (secret_type, secret_id, name) in enumerate(listed, 1):
        out.append(_aws_candidate(reader, secret_type, secret_id, f"aws:{name}"))
        if progress is not None:
            progress(done, len(listed))
    return out


def _aws_candidate(reader: Any, secret_type: str, secret_id: str, origin: str) -> Candidate:
    try:
        found = reader.lookup(secret_type, secret_id)
    except InvalidValueError as err:
        return Candidate(secret_type, secret_id, origin, error=str(err))
    if found is None:
        return Candidate(secret_type, secret_id, origin, skip_reason="gone between listing and reading (deleted?)")
    return candidate(secret_type, secret_id, origin, found.value)
