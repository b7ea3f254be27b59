"""Read secrets written for Airflow's ``VaultBackend`` layout, so a team can switch without rewriting them.

Airflow's hashicorp provider (``airflow.providers.hashicorp.secrets.vault.VaultBackend``)
reads ``<mount>/<connections_path>/<conn_id>``, ``<mount>/<variables_path>/<key>`` and
``<mount>/<config_path>/<key>`` on a KV v2 (default) or v1 mount, and:

* a connection is the secret's ``conn_uri`` field when present (a URI),
  otherwise the secret's data map itself, serialized as Airflow's JSON
  connection format (``conn_type``, ``host``, ``login``, ``password``,
  ``schema``, ``port``, ``extra``);
* a variable or config value is the secret's ``value`` field.

With the Vault store option ``airflow_layout`` (opt-in), a runlease path
``<env>/<kind>/<name>`` in the configured environment that has no runlease
record of its own is looked up there: it resolves to one CURRENT version
(the KV v2 version; 1 on KV v1), with no PENDING/PREVIOUS and no runlease
metadata, so it is leased with the ``static`` issuer, audited, masked and
revoked like any other secret. runlease never writes to these paths: a
``runlease put`` of the same path creates a runlease record, which then takes
precedence (that is how a secret is migrated to runlease's layout).

Only the path segment from runlease's name is used (one segment: a name
cannot climb out of the configured base path).

The same layout can be given to ``RunleaseBackend`` as the backend kwarg
``airflow_layout`` in the names of VaultBackend's own backend_kwargs
(``mount_point``, ``kv_engine_version``, ``connections_path``, ...), so a
team copies them over unchanged: :meth:`AirflowLayout.from_vault_backend_kwargs`.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from runlease.connection import connection_from_dict
from runlease.errors import InvalidValueError
from runlease.models import SecretPath, SecretValue
from runlease.store.codec import malformed
from runlease.store.vault_auth import no_engine_mounted

#: The connection fields Airflow's JSON connection format knows and runlease keeps.
CONNECTION_FIELDS = ("conn_type", "host", "login", "password", "schema", "port", "extra")
#: Fields VaultBackend passes to ``Connection`` that runlease does not keep: not secret and not used to
#: connect (``runlease import`` drops the same ones); dropping them, not refusing them, keeps a secret
#: that carries a ``description`` readable, as it is for Airflow.
DROPPED_FIELDS = ("description", "conn_id")
#: VaultBackend's backend_kwargs names for the two settings :class:`AirflowLayout` names differently.
VAULT_BACKEND_NAMES = {"mount_point": "mount", "kv_engine_version": "kv_version"}
_SEGMENT = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"


class AirflowLayout(BaseModel):
    """Where Airflow's VaultBackend keeps secrets (the same names as its backend_kwargs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The runlease environment these secrets answer for (Airflow's layout has none).
    env: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    #: Airflow's ``mount_point``.
    mount: str = Field(default="secret", pattern=_SEGMENT)
    #: Airflow's ``kv_engine_version``.
    kv_version: Literal[1, 2] = 2
    connections_path: str | None = Field(default="connections", pattern=_SEGMENT)
    variables_path: str | None = Field(default="variables", pattern=_SEGMENT)
    config_path: str | None = Field(default="config", pattern=_SEGMENT)

    @classmethod
    def from_vault_backend_kwargs(cls, kwargs: dict[str, Any], env: str) -> "AirflowLayout":
        """The layout from Airflow VaultBackend's backend_kwargs names (the runlease names work too).

        Only the layout is taken; VaultBackend's connection and auth kwargs (``url``,
        ``auth_type``, ``role_id``, ...) belong in the store options, where runlease
        never accepts a credential inline, so they are refused here by name.
        ``env`` is the backend's environment unless the kwargs name one.
        """
        renamed = VAULT_BACKEND_NAMES
        fields: dict[str, Any] = {"env": env}
        given: dict[str, str] = {}
        for key, value in kwargs.items():
            name = renamed.get(key, key)
            if name in given:
                raise ValueError(f"{given[name]!r} and {key!r} name the same setting: give one")
            given[name] = key
            if name not in cls.model_fields:
                known = ", ".join(["mount_point", "kv_engine_version", "connections_path", "variables_path",
                                   "config_path", "env"])
                raise ValueError(f"unknown key {key!r} (known: {known}; Vault's address and auth go in "
                                 "store_options)")
            if isinstance(value, str) and name.endswith("_path"):
                value = value.strip("/") or None  # VaultBackend strips slashes; "" turns a kind off
            if name == "kv_version" and isinstance(value, str) and value.strip().isdigit():
                value = int(value)  # airflow.cfg and environment overrides are text
            fields[name] = value
        return cls.model_validate(fields)

    def kv_path(self, path: SecretPath) -> str | None:
        """The Airflow-layout KV path for ``path``, None when the layout does not cover it."""
        if path.env != self.env or "/" in path.name:
            return None
        base = {"connections": self.connections_path, "variables": self.variables_path,
                "config": self.config_path}.get(path.kind)
        return f"{base.strip('/')}/{path.name}" if base else None


def _connection(path: SecretPath, version: int, where: str, data: dict[str, Any]) -> SecretValue:
    """A connection as runlease's own codec would store it: the same checks as ``runlease put``.

    Airflow's ``Connection`` would also take a non-numeric port or a non-JSON
    ``extra`` and fail later, in the hook; here they are refused up front,
    naming the secret and the field, never a value.
    """
    uri = data.get("conn_uri")
    if uri:
        if not isinstance(uri, str):
            raise malformed(path, version, where, "'conn_uri' is not a string")
        return uri
    unknown = sorted(k for k in data if k not in CONNECTION_FIELDS and k not in DROPPED_FIELDS and k != "conn_uri")
    conn = {k: data[k] for k in CONNECTION_FIELDS if k in data and data[k] is not None}
    if not conn:
        raise malformed(path, version, where, "neither 'conn_uri' nor connection fields (conn_type, host, ...)")
    if unknown:
        raise malformed(path, version, where, f"unknown connection fields {unknown} (known: "
                        f"conn_uri, {', '.join(CONNECTION_FIELDS + DROPPED_FIELDS)})")
    try:
        return connection_from_dict(conn)
    except InvalidValueError as err:
        raise malformed(path, version, where, str(err)) from None


def to_value(path: SecretPath, version: int, where: str, data: Any) -> SecretValue:
    """What Airflow's VaultBackend would hand out for this secret, as a runlease value."""
    if not isinstance(data, dict):
        raise malformed(path, version, where, "expected a KV data map")
    if path.kind == "connections":
        return _connection(path, version, where, data)
    if "value" not in data:
        raise malformed(path, version, where, "no 'value' field (Airflow's layout for variables and config)")
    value = data["value"]
    return value if isinstance(value, str) else json.dumps(value)


def read_entry(layout: AirflowLayout, kv_path: str, call: Callable[[str, Callable[[Any], Any]], Any],
               version: int | None = None) -> tuple[int, Any, dict[str, Any]] | None:
    """``(version, data map, kv metadata)`` of an Airflow-layout secret, None when it does not exist."""
    import hvac.exceptions as hx

    where = f"Vault {layout.mount}/{kv_path}"
    try:
        if layout.kv_version == 1:
            if version not in (None, 1):
                return None
            resp = call(f"reading {where}", lambda c: c.secrets.kv.v1.read_secret(
                path=kv_path, mount_point=layout.mount))
            return 1, (resp or {}).get("data"), {}
        resp = call(f"reading {where}", lambda c: c.secrets.kv.v2.read_secret_version(
            path=kv_path, version=version, mount_point=layout.mount, raise_on_deleted_version=True))
    except hx.InvalidPath:
        return None
    data = (resp or {}).get("data") or {}
    meta = data.get("metadata") or {}
    return int(meta.get("version") or 1), data.get("data"), meta



def list_keys(layout: AirflowLayout, folder: str, call: Callable[[str, Callable[[Any], Any]], Any]) -> list[str] | None:
    """The keys one level under ``folder`` in the layout's mount (sub-folders end in ``/``).

    ``[]`` when nothing is there; None when Vault has no secrets engine mounted
    at ``layout.mount`` at all (its 404 says "no handler for route"), which a
    caller may want to report rather than treat as empty.
    """
    import hvac.exceptions as hx

    try:
        resp = call(f"listing Vault {layout.mount}/{folder}/", lambda c: (
            c.secrets.kv.v1 if layout.kv_version == 1 else c.secrets.kv.v2).list_secrets(
                path=folder, mount_point=layout.mount))
    except hx.InvalidPath as err:
        if no_engine_mounted(err):
            return None
        return []
    return [str(k) for k in ((resp or {}).get("data") or {}).get("keys") or []]
