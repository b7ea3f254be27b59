"""Process settings, read from ``RUNLEASE_*`` environment variables (pydantic-settings).

``RUNLEASE_HOME`` (default ``~/.runlease``) holds the key file, the store and
the policy file; every command and adapter honours it, so a test or a demo
can point everything at a temporary directory with one variable.
"""

from __future__ import annotations

from pathlib import Path

import json
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runlease.errors import ConfigError

KEY_FILE_NAME = "master.key"
STORE_FILE_NAME = "store.db"
POLICY_FILE_NAME = "policy.toml"
ANCHOR_FILE_NAME = "audit.anchor"
#: Where Kubernetes mounts a pod's service-account token (the default workload token).
DEFAULT_TOKEN_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class Settings(BaseSettings):
    """Where runlease keeps its state and the defaults a broker uses."""

    model_config = SettingsConfigDict(env_prefix="RUNLEASE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".runlease")
    master_key: SecretStr | None = None
    env: str = "dev"
    default_ttl: int = Field(default=3600, ge=1, description="lease TTL in seconds when the caller gives none")
    max_ttl: int = Field(default=43200, ge=1)
    policy_file: Path | None = None
    #: Which central manager holds the values. Only ``local`` (the embedded
    #: store) exists in the core; other stores register in runlease.runtime.
    store: str = "local"
    #: Store-specific options (Vault address/mount, AWS region/prefix, ...), as
    #: JSON in ``RUNLEASE_STORE_OPTIONS``.
    store_options: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    #: Where leases and the audit chain live: ``local`` (the store's SQLite file)
    #: or ``postgres`` (shared by workers on many machines; see docs/ledger.md).
    ledger: str = "local"
    #: libpq DSN of the shared ledger (``RUNLEASE_LEDGER_DSN``); it holds a password, hence SecretStr.
    ledger_dsn: SecretStr | None = None
    #: PostgreSQL schema that holds the ledger's tables.
    ledger_schema: str = Field(default="runlease", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    #: URL of a ``runlease serve`` instance (``RUNLEASE_SERVER``). When set, clients (the CLI,
    #: runlease_kfp, ``open_runtime``) talk to it and need no home, key or store credentials.
    server: str | None = None
    #: File holding the bearer token sent to the server: a projected service-account token
    #: (re-read when it changes: kubelet rotates it) or an admin token.
    token_file: Path = DEFAULT_TOKEN_FILE
    #: CA bundle that signs the server's TLS certificate (default: the system's trust store).
    server_ca: Path | None = None
    #: Seconds a client waits for the server to answer one request.
    server_timeout: float = Field(default=30.0, gt=0)

    #: Largest value ``put`` accepts, in bytes of its stored JSON form (``RUNLEASE_MAX_VALUE_BYTES``):
    #: a 50 MB value once cost 655 MB of RSS to lease; credentials are small.
    max_value_bytes: int = Field(default=1 << 20, ge=1)

    @field_validator("store_options", mode="before")
    @classmethod
    def _store_options_json(cls, value: Any) -> Any:
        """Parse ``RUNLEASE_STORE_OPTIONS`` ourselves: the settings library's error (and pydantic's)
        would echo the text, which may hold a token put there by mistake. A ConfigError (not a
        ValueError) passes through pydantic untouched, naming the setting and the position only."""
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ConfigError(f"RUNLEASE_STORE_OPTIONS is not valid JSON (line {err.lineno}, column {err.colno}); "
                              "expected an object such as {\"address\": \"https://vault:8200\"}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"RUNLEASE_STORE_OPTIONS must be a JSON object, not a {type(parsed).__name__}")
        return parsed

    @field_validator("home", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def key_file(self) -> Path:
        return self.home / KEY_FILE_NAME

    @property
    def store_file(self) -> Path:
        return self.home / STORE_FILE_NAME

    @property
    def anchor_file(self) -> Path:
        """The audit anchor lives beside the key file, outside the database it vouches for."""
        return self.home / ANCHOR_FILE_NAME

    @property
    def effective_policy_file(self) -> Path:
        return self.policy_file or self.home / POLICY_FILE_NAME
