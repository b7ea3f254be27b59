"""The backend's kwargs: parsed, validated, and turned into runlease Settings.

Airflow builds the backend from ``[secrets] backend_kwargs`` (JSON) and then
overlays per-key ``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>`` environment
variables, whose values are *raw strings*
(``airflow/_shared/configuration/parser.py``: ``_get_custom_secret_backend``,
``_collect_kwarg_env_vars``); workers read ``[workers] secrets_backend`` /
``secrets_backend_kwargs`` first. So every field here accepts its string form
too (``"900"`` for a TTL, JSON text for ``store_options``, ``""`` to disable a
prefix), and every error names the kwarg, because the person reading it is
editing airflow.cfg, not runlease code.

Precedence: kwarg > ``RUNLEASE_*`` environment variable > runlease default.
With no kwargs the backend uses the embedded store under ``RUNLEASE_HOME`` in
environment ``dev``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runlease.errors import ConfigError, InvalidPathError
from runlease.models import KINDS, SecretPath
from runlease.runtime import check_settings
from runlease.settings import Settings

_NAME_PREFIX_RE = re.compile(r"[A-Za-z0-9_.\-]*")

BACKEND = "RunleaseBackend"


def kwarg_error(kwarg: str, problem: str) -> ConfigError:
    return ConfigError(f"{BACKEND} backend_kwargs {kwarg!r}: {problem}")


#: How many Airflow IDs a backend remembers the runlease path of.
PATH_MEMO_MAX = 4096


@dataclass(frozen=True)
class PathPrefix:
    """Where one kind of Airflow secret lives: ``<kind>[/<name prefix>]`` inside the environment.

    ``connections/af_`` maps conn_id ``warehouse`` to ``<env>/connections/af_warehouse``.
    """

    kind: str
    name_prefix: str = ""

    @classmethod
    def parse(cls, kwarg: str, text: str) -> "PathPrefix":
        kind, _, name_prefix = text.strip().partition("/")
        if kind not in KINDS:
            raise kwarg_error(
                kwarg, f"path prefix must be <kind>[/<name prefix>] with kind one of {', '.join(sorted(KINDS))}"
            )
        if "/" in name_prefix or not _NAME_PREFIX_RE.fullmatch(name_prefix):
            raise kwarg_error(kwarg, "the name prefix after the kind may only use A-Z a-z 0-9 _ . -")
        return cls(kind, name_prefix)

    def path(self, env: str, secret_id: str) -> SecretPath | None:
        """The path for an Airflow ID, or None when the ID cannot name a runlease secret."""
        if "/" in secret_id:
            # A full path could name another environment; environments never cross.
            return None
        try:
            return SecretPath.of(env, self.kind, self.name_prefix + secret_id)
        except InvalidPathError:
            return None


class BackendKwargs(BaseModel):
    """Every kwarg the backend accepts. Unknown kwargs are an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    home: Path | None = Field(default=None, description="runlease home (RUNLEASE_HOME)")
    env: str | None = Field(default=None, description="environment bare IDs resolve in (RUNLEASE_ENV)")
    store: str | None = Field(default=None, description="central manager: local, or vault/aws when installed")
    store_options: dict[str, Any] | None = None
    policy_file: Path | None = None
    connections_prefix: str | None = "connections"
    variables_prefix: str | None = "variables"
    config_prefix: str | None = "config"
    connections_lookup_pattern: str | None = None
    variables_lookup_pattern: str | None = None
    config_lookup_pattern: str | None = None
    ttl: int | None = Field(default=None, gt=0, description="lease TTL seconds (RUNLEASE_DEFAULT_TTL)")
    cache: bool = True
    cache_revalidate_seconds: float = Field(default=0.0, ge=0)
    #: Also read secrets written for Airflow's SecretsManagerBackend (true, or its kwargs as an object;
    #: see runlease_airflow.aws_layout). Validated when the backend starts.
    aws_secrets_manager: bool | dict[str, Any] | str | None = None
    #: Vault store only, opt-in: also read secrets written for Airflow's VaultBackend, given in
    #: VaultBackend's own backend_kwargs names (runlease.store.vault_airflow); sets the store
    #: option ``airflow_layout``.
    airflow_layout: dict[str, Any] | None = None

    @field_validator("store_options", "airflow_layout", mode="before")
    @classmethod
    def _options_from_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("must be a JSON object") from None
        return value


def _with_airflow_layout(settings: Settings, layout: dict[str, Any]) -> Settings:
    """The settings with the kwarg ``airflow_layout`` as the Vault store option of that name."""
    if settings.store != "vault":
        raise kwarg_error("airflow_layout", f"only for the Vault store (store is {settings.store!r})")
    if (settings.store_options or {}).get("airflow_layout") is not None:
        raise kwarg_error("airflow_layout", "also set in the store options (airflow_layout): set it in one place")
    from runlease.store.vault_airflow import VAULT_BACKEND_NAMES, AirflowLayout

    try:
        parsed = AirflowLayout.from_vault_backend_kwargs(layout, settings.env)
    except ValidationError as err:
        first = err.errors()[0]
        airflow_names = {name: alias for alias, name in VAULT_BACKEND_NAMES.items()}  # as the user wrote them
        where = ".".join(airflow_names.get(str(p), str(p)) for p in first["loc"])
        raise kwarg_error(f"airflow_layout.{where}" if where else "airflow_layout", first["msg"]) from None
    except ValueError as err:
        raise kwarg_error("airflow_layout", str(err)) from None
    options = {**(settings.store_options or {}), "airflow_layout": parsed.model_dump(mode="json")}
    return settings.model_copy(update={"store_options": options})


@dataclass(frozen=True)
class BackendConfig:
    """Validated backend configuration plus the runlease Settings it implies."""

    settings: Settings
    prefixes: dict[str, PathPrefix | None]
    patterns: dict[str, re.Pattern[str] | None]
    ttl: int | None
    cache: bool
    cache_revalidate_seconds: float
    aws_secrets_manager: Any = None
    #: Airflow IDs already mapped (a task looks the same few IDs up again and again; the
    #: mapping only depends on this frozen config). Bounded; SecretPath is immutable.
    _paths: dict[tuple[str, str], SecretPath | None] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> "BackendConfig":
        try:
            parsed = BackendKwargs.model_validate(kwargs)
        except ValidationError as err:
            first = err.errors()[0]
            kwarg = ".".join(str(p) for p in first["loc"]) or "?"
            if first["type"] == "extra_forbidden":
                known = ", ".join(BackendKwargs.model_fields)
                raise kwarg_error(kwarg, f"unknown kwarg (known: {known})") from None
            # pydantic's "msg" never contains the input; "input" would, and is not used.
            raise kwarg_error(kwarg, first["msg"]) from None

        overrides: dict[str, Any] = {}
        for name in ("home", "env", "store", "store_options", "policy_file"):
            value = getattr(parsed, name)
            if value is not None and value != "":
                overrides[name] = value
        try:
            settings = Settings(**overrides)
        except ValidationError as err:
            first = err.errors()[0]
            raise kwarg_error(str(first["loc"][0]) if first["loc"] else "?", first["msg"]) from None
        if parsed.airflow_layout is not None:
            settings = _with_airflow_layout(settings, parsed.airflow_layout)
        try:
            SecretPath.of(settings.env, "connections", "probe")
        except InvalidPathError as err:
            raise kwarg_error("env", str(err)) from None
        try:
            check_settings(settings)
        except ConfigError as err:
            # check_settings names the RUNLEASE_* variable; name the kwarg too.
            raise kwarg_error("store", str(err)) from None
        if parsed.ttl is not None and parsed.ttl > settings.max_ttl:
            raise kwarg_error("ttl", f"must not exceed the maximum lease TTL ({settings.max_ttl} s, RUNLEASE_MAX_TTL)")

        prefixes: dict[str, PathPrefix | None] = {}
        patterns: dict[str, re.Pattern[str] | None] = {}
        for secret_type in ("connections", "variables", "config"):
            prefix_kwarg = f"{secret_type}_prefix"
            raw = getattr(parsed, prefix_kwarg)
            prefixes[secret_type] = PathPrefix.parse(prefix_kwarg, raw) if raw else None
            pattern_kwarg = f"{secret_type}_lookup_pattern"
            raw_pattern = getattr(parsed, pattern_kwarg)
            if raw_pattern:
                try:
                    # Ignoring case, as Airflow's own backends match theirs (re.match(..., re.IGNORECASE)).
                    patterns[secret_type] = re.compile(raw_pattern, re.IGNORECASE)
                except re.error as err:
                    raise kwarg_error(pattern_kwarg, f"not a valid regular expression ({err})") from None
            else:
                patterns[secret_type] = None
        return cls(
            settings=settings, prefixes=prefixes, patterns=patterns, ttl=parsed.ttl,
            cache=parsed.cache, cache_revalidate_seconds=parsed.cache_revalidate_seconds,
            aws_secrets_manager=parsed.aws_secrets_manager,
        )

    def path_for(self, secret_type: str, secret_id: str) -> SecretPath | None:
        """Map an Airflow ID to a runlease path, or None to let Airflow try the next backend."""
        key = (secret_type, secret_id)
        if key in self._paths:
            return self._paths[key]
        path = self._map(secret_type, secret_id)
        if len(self._paths) < PATH_MEMO_MAX:
            self._paths[key] = path
        return path

    def _map(self, secret_type: str, secret_id: str) -> SecretPath | None:
        prefix = self.prefixes[secret_type]
        if prefix is None:
            return None
        pattern = self.patterns[secret_type]
        if pattern is not None and pattern.match(secret_id) is None:
            return None
        return prefix.path(self.settings.env, secret_id)
