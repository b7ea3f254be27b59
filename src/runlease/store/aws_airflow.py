"""Secrets written for Airflow's own ``SecretsManagerBackend``: the layout, read (never written) by runlease.

Why in the core: two readers need the same parser -- the Airflow backend's
opt-in fallback (``runlease_airflow.aws_layout``, backend kwarg
``aws_secrets_manager``) and ``runlease import aws:`` (runlease.migrate) --
and the core never imports Airflow, so the layout lives here and the provider
only adds its kwarg handling.

The layout, as the Amazon provider (9.x) reads it:

- name ``<connections_prefix><sep><conn_id>`` (``airflow/connections/<id>``),
  ``<variables_prefix><sep><key>``, ``<config_prefix><sep><key>``; a prefix's
  trailing ``sep`` is dropped, an empty prefix means the bare ID, a ``null``
  prefix turns that kind off;
- a connection is an Airflow URI, or a JSON object whose keys may use the
  aliases below (extendable with ``extra_conn_words``, e.g.
  ``{"login": ["usr"]}``; ``user`` is accepted for ``login``);
- a variable or config value is the plain ``SecretString``;
- ``*_lookup_pattern`` is matched with ``re.match`` ignoring case.

Every read names ``VersionStage=AWSCURRENT`` explicitly. Only the
team-agnostic name is read (runlease has no Airflow multi-team namespaces).
:meth:`AirflowLayoutSource.list_ids` lists a kind's IDs (ListSecrets with a
name filter on the prefix) for the importer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runlease.clients.awsclient import AwsConnectionOptions, AwsService
from runlease.errors import InvalidValueError
from runlease.models import SecretValue

#: The Amazon provider's aliases for connection fields in a JSON secret (``_standardize_secret_keys``).
CONN_WORDS: dict[str, tuple[str, ...]] = {
    "login": ("login", "user", "username", "user_name"),
    "password": ("password", "pass", "key"),
    "host": ("host", "remote_host", "server"),
    "port": ("port",),
    "schema": ("database", "schema"),
    "conn_type": ("conn_type", "conn_id", "connection_type", "engine"),
    "extra": ("extra",),
}
#: ListSecrets page size (AWS's maximum) and how many pages a listing may take (a million names).
PAGE_SIZE = 100
MAX_PAGES = 10_000
_NOT_THERE = frozenset({"ResourceNotFoundException"})


class LayoutOptions(BaseModel):
    """Airflow's SecretsManagerBackend kwargs, plus AWS client settings (``client``) where no store provides them."""

    model_config = ConfigDict(extra="forbid")

    connections_prefix: str | None = "airflow/connections"
    variables_prefix: str | None = "airflow/variables"
    config_prefix: str | None = "airflow/config"
    connections_lookup_pattern: str | None = None
    variables_lookup_pattern: str | None = None
    config_lookup_pattern: str | None = None
    sep: str = Field(default="/", min_length=1, max_length=4)
    extra_conn_words: dict[str, list[str]] = Field(default_factory=dict)
    #: AWS client settings (region, endpoint_url, role_arn, verify, ...); default: the aws store's own.
    client: AwsConnectionOptions | None = None

    @field_validator("extra_conn_words")
    @classmethod
    def _known_fields(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(CONN_WORDS) - {"user"})
        if unknown:
            raise ValueError(f"unknown connection fields {unknown} (known: user, {', '.join(CONN_WORDS)})")
        return value

    @field_validator("connections_lookup_pattern", "variables_lookup_pattern", "config_lookup_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a valid regular expression ({err})") from None
        return value


@dataclass(frozen=True)
class Found:
    """A value found in Airflow's layout and where: the AWS name and VersionId (for the audit trail)."""

    value: SecretValue = field(repr=False)
    name: str
    version_id: str


class AirflowLayoutSource:
    """Look up an Airflow ID in Airflow's Secrets Manager layout (one GetSecretValue)."""

    def __init__(self, options: LayoutOptions, service: AwsService) -> None:
        self.options = options
        self.service = service
        words = {k: list(v) for k, v in CONN_WORDS.items()}
        for conn_field, extra in options.extra_conn_words.items():
            words["login" if conn_field == "user" else conn_field].extend(extra)
        self.words = words

    def name_for(self, secret_type: str, secret_id: str) -> str | None:
        """The AWS secret name Airflow's backend would read, or None (kind off, pattern not matched)."""
        prefix: str | None = getattr(self.options, f"{secret_type}_prefix", None)
        if prefix is None:
            return None
        pattern = getattr(self.options, f"{secret_type}_lookup_pattern", None)
        if pattern and not re.match(pattern, secret_id, re.IGNORECASE):
            return None
        sep = self.options.sep
        prefix = prefix.rstrip(sep)
        return f"{prefix}{sep}{secret_id}" if prefix else secret_id

    def prefix_for(self, secret_type: str) -> str | None:
        """The name prefix every secret of this kind starts with (``<prefix><sep>``), None when the kind is off."""
        prefix: str | None = getattr(self.options, f"{secret_type}_prefix", None)
        if prefix is None:
            return None
        prefix = prefix.rstrip(self.options.sep)
        return f"{prefix}{self.options.sep}" if prefix else ""

    def list_ids(self, secret_type: str) -> list[tuple[str, str]]:
        """``(id, AWS name)`` of every secret of this kind, by name (ListSecrets, name filter on the prefix).

        AWS's name filter is a case-insensitive prefix match, so names are checked
        again here, exactly. IDs whose lookup pattern does not match are left out
        (Airflow's backend would never read them). Secrets scheduled for deletion
        are not listed (ListSecrets' default). An empty prefix is refused: it
        would take every secret of the account for this kind.
        """
        head = self.prefix_for(secret_type)
        if head is None:
            return []
        if not head:
            raise InvalidValueError(f"the {secret_type} prefix is empty: listing would take every secret in the "
                                    f"account as {secret_type}; give the prefix the secrets are under")
        out: list[tuple[str, str]] = []
        token: str | None = None
        for _page in range(MAX_PAGES):  # bounded
            kwargs: dict[str, Any] = {"Filters": [{"Key": "name", "Values": [head]}], "MaxResults": PAGE_SIZE}
            if token:
                kwargs["NextToken"] = token
            resp = self.service.call("secretsmanager:ListSecrets", f"listing secrets named {head}*",
                                     lambda c, kw=kwargs: c.list_secrets(**kw))
            for entry in resp.get("SecretList") or []:
                name = str(entry.get("Name", ""))
                secret_id = name[len(head):]
                if name.startswith(head) and secret_id and self.name_for(secret_type, secret_id) == name:
                    out.append((secret_id, name))
            token = resp.get("NextToken")
            if not token:
                break
        return sorted(out)

    def lookup(self, secret_type: str, secret_id: str) -> Found | None:
        from botocore.exceptions import ClientError

        name = self.name_for(secret_type, secret_id)
        if name is None:
            return None
        try:
            resp = self.service.call(
                "secretsmanager:GetSecretValue", f"reading {name} (Airflow layout)",
                lambda c: c.get_secret_value(SecretId=name, VersionStage="AWSCURRENT"), passthrough=_NOT_THERE)
        except ClientError:
            return None
        text = resp.get("SecretString")
        where = f"AWS Secrets Manager secret {name} (Airflow layout, {secret_type} {secret_id!r})"
        if not isinstance(text, str):
            raise InvalidValueError(f"{where} holds no text value (binary or empty)")
        value: SecretValue = text
        if secret_type == "connections" and text.strip().startswith("{"):
            value = self._standardized(text, where)
        return Found(value=value, name=name, version_id=str(resp.get("VersionId", "")))

    def _standardized(self, text: str, where: str) -> dict[str, Any]:
        """Airflow's JSON connection with its aliases mapped to the field names (the provider's rules)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise InvalidValueError(f"{where} is not valid JSON (line {err.lineno}, column {err.colno})") from None
        if not isinstance(doc, dict):
            raise InvalidValueError(f"{where} is JSON but not an object")
        out: dict[str, Any] = {}
        for conn_field, words in self.words.items():
            value = next((v for k, v in doc.items() if k in words), None)
            if value is not None:
                out[conn_field] = value
        return out
