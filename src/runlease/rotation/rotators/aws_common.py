"""How the AWS rotators reach AWS: region, endpoint, credentials, bounded time, quiet logs.

Built on :class:`runlease.clients.awsclient.AwsService` (timeouts, bounded retries,
403-class errors mapped to clear errors, botocore's credential-bearing
DEBUG lines suppressed). Two additions the rotators need: calling AWS with
an explicit access key -- the admin credentials kept as a runlease secret
(``settings.admin``), and the PENDING key itself when the IAM
rotator tests it -- instead of the process's standard credential chain.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runlease.clients.awsclient import AwsConnectionOptions, AwsService
from runlease.errors import ConfigError
from runlease.rotation.rotators.base import RotationContext


class AwsTargetSettings(BaseModel):
    """Where and as whom the rotator calls AWS (shared by both AWS rotators)."""

    model_config = ConfigDict(extra="forbid")

    region: str | None = None
    endpoint_url: str | None = None
    #: runlease path of an aws connection (login = access key id, password = secret key) to call AWS
    #: with; default: the process's standard credential chain (environment, profile, instance role).
    admin: str | None = None
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    read_timeout: float = Field(default=15.0, gt=0, le=300)
    max_attempts: int = Field(default=3, ge=1, le=10)

    def options(self, default_region: str | None = None) -> AwsConnectionOptions:
        return AwsConnectionOptions(
            region=self.region or default_region, endpoint_url=self.endpoint_url,
            connect_timeout=self.connect_timeout, read_timeout=self.read_timeout, max_attempts=self.max_attempts,
        )


class KeyedAwsService(AwsService):
    """An AwsService whose session uses one explicit access key instead of the standard chain."""

    def __init__(self, service: str, options: AwsConnectionOptions, *, label: str, key_id: str, secret_key: str,
                 session_token: str | None = None) -> None:
        super().__init__(service, options, label=label)
        self._key = (key_id, secret_key, session_token)

    def __repr__(self) -> str:  # never the key
        return f"KeyedAwsService({self.service!r}, {self.label!r})"

    def _session(self) -> Any:
        import boto3

        key_id, secret_key, token = self._key
        return boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=secret_key,
                             aws_session_token=token, region_name=self.options.region)


def keyed_service(service: str, options: AwsConnectionOptions, conn: dict[str, Any], label: str) -> KeyedAwsService:
    """A client acting as the access key in an Airflow aws connection dict."""
    if not conn.get("login") or not conn.get("password"):
        raise ConfigError(f"{label}: the aws connection has no access key id (login) or secret key (password)")
    extra = conn.get("extra") or {}
    return KeyedAwsService(service, options, label=label, key_id=str(conn["login"]), secret_key=str(conn["password"]),
                           session_token=extra.get("aws_session_token") if isinstance(extra, dict) else None)


def admin_service(ctx: RotationContext, settings: AwsTargetSettings, service: str, label: str,
                  default_region: str | None = None) -> AwsService:
    """The client the rotator manages the target with."""
    options = settings.options(default_region)
    if settings.admin is None:
        return AwsService(service, options, label=label)
    admin = ctx.read_secret(settings.admin)
    if not isinstance(admin.value, dict):
        raise ConfigError(f"{label}: credentials secret {settings.admin} is not an aws connection")
    return keyed_service(service, options, admin.value, label)
