"""The ``aws-sts`` issuer: ``sts:AssumeRole`` per lease, named and tagged after the run.

The stored secret is an Airflow ``aws`` connection with the *base*
credentials allowed to assume the role (``login`` = access key id,
``password`` = secret key, ``extra.aws_session_token`` if they are
temporary themselves, ``extra.region_name``, ``extra.endpoint_url``). With
no login, boto3's default chain is used (instance profile, IRSA, env), which
is how a worker usually authenticates. Metadata names the role
(``role_arn``; optional ``external_id``, ``region``).

What the run gets is an Airflow-style ``aws`` connection: key id, secret,
``extra.aws_session_token`` and ``extra.expiration``, valid for exactly this
session. Why the naming matters: CloudTrail records the RoleSessionName and
session tags of every call made with these credentials, so a call traces
back to ``dag/run/task`` (and the lease) without joining anything.

* RoleSessionName: ``<pipeline>.<task>.<run>`` reduced to AWS's charset
  ``[A-Za-z0-9_+=,.@-]`` and 64 characters (long names keep a hash suffix so
  two runs never collapse onto one truncated name).
* DurationSeconds: the lease TTL, clamped to STS's 900..43200 with a warning.
  The role's own MaxSessionDuration (default 1 h) may be lower; STS then
  refuses and the error says so.
* Session tags ``dag``, ``run``, ``task``, ``lease`` (the role's trust
  policy must allow ``sts:TagSession``).

Revoke: STS has no API to end one session early. Revoking a lease ends the
run's claim (ledger, audit, masking); the credentials themselves stop
working at their expiry, at least 15 minutes after issue. AWS's "revoke
active sessions" denies *every* session of the role, which would hit other
runs, so it is not done automatically (docs/issuers.md).
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from runlease.clients.botolog import quiet_botocore
from runlease.errors import BackendError, ConfigError, scrub
from runlease.issuers.base import IssuedCredential
from runlease.issuers.options import connection_value, issuer_options
from runlease.models import Lease, RunIdentity
from runlease.store.base import StoredSecret

log = logging.getLogger(__name__)

MIN_DURATION_S = 900
MAX_DURATION_S = 43_200
_SESSION_NAME_BAD = re.compile(r"[^A-Za-z0-9_+=,.@-]")
_TAG_VALUE_BAD = re.compile(r"[^A-Za-z0-9 _.:/=+@-]")


class AwsStsOptions(BaseModel):
    """Metadata keys of a secret leased through the ``aws-sts`` issuer."""

    model_config = ConfigDict(extra="ignore")

    role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]+$", max_length=600)
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")
    connect_timeout: int = Field(default=10, ge=1, le=120)
    read_timeout: int = Field(default=30, ge=1, le=300)


def role_session_name(identity: RunIdentity) -> str:
    """A RoleSessionName that says which run asked: AWS charset, 2..64 characters."""
    raw = ".".join(p for p in (identity.pipeline, identity.task_id, identity.run_id) if p)
    name = _SESSION_NAME_BAD.sub("-", raw)
    if len(name) > 64:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:55]}-{digest}"
    return name if len(name) >= 2 else f"rl-{name}"


def _tag_value(value: str | None) -> str:
    return _TAG_VALUE_BAD.sub("-", value or "-")[:256]


def session_tags(identity: RunIdentity, lease_id: str) -> list[dict[str, str]]:
    return [
        {"Key": "dag", "Value": _tag_value(identity.pipeline)},
        {"Key": "run", "Value": _tag_value(identity.run_id)},
        {"Key": "task", "Value": _tag_value(identity.task_id)},
        {"Key": "lease", "Value": _tag_value(lease_id)},
    ]


def clamp_duration(ttl: timedelta) -> int:
    wanted = int(ttl.total_seconds())
    duration = min(max(wanted, MIN_DURATION_S), MAX_DURATION_S)
    if duration != wanted:
        log.warning("aws-sts: lease TTL %d s is outside STS's %d..%d s; asking for DurationSeconds=%d",
                    wanted, MIN_DURATION_S, MAX_DURATION_S, duration)
    return duration


class AwsStsIssuer:
    name = "aws-sts"

    def check_metadata(self, metadata: dict[str, Any], path: str) -> None:
        issuer_options(AwsStsOptions, metadata, path, self.name)

    def issue(self, secret: StoredSecret, identity: RunIdentity, lease_id: str, ttl: timedelta) -> IssuedCredential:
        opts = issuer_options(AwsStsOptions, secret.metadata, secret.path, self.name)
        base = connection_value(secret, self.name, "an aws connection with the base credentials")
        extra = base.get("extra") or {}
        region = opts.region or extra.get("region_name") or "us-east-1"
        endpoint = extra.get("endpoint_url")
        request: dict[str, Any] = {
            "RoleArn": opts.role_arn,
            "RoleSessionName": role_session_name(identity),
            "DurationSeconds": clamp_duration(ttl),
            "Tags": session_tags(identity, lease_id),
        }
        if opts.external_id:
            request["ExternalId"] = opts.external_id
        response = self._assume_role(base, region, endpoint, opts, request)
        creds = response.get("Credentials") or {}
        try:
            expiration = creds["Expiration"].astimezone(timezone.utc)
            value_extra: dict[str, Any] = {
                "region_name": region,
                "aws_session_token": creds["SessionToken"],
                "expiration": expiration.isoformat(),
            }
            value = {"conn_type": "aws", "login": creds["AccessKeyId"], "password": creds["SecretAccessKey"],
                     "extra": value_extra}
        except (KeyError, AttributeError):
            raise BackendError(f"AWS STS at {_where(region, endpoint)} answered AssumeRole without credentials") from None
        if endpoint:
            value_extra["endpoint_url"] = endpoint
        return IssuedCredential(
            value=value,
            expires_at=expiration,
            state={
                "role_arn": opts.role_arn,
                "session_name": request["RoleSessionName"],
                "assumed_role_id": (response.get("AssumedRoleUser") or {}).get("AssumedRoleId"),
                # An access key *id* is an identifier, not a secret (AWS says so); it is
                # what CloudTrail is searched by when a lease is investigated.
                "access_key_id": creds["AccessKeyId"],
                "duration_s": request["DurationSeconds"],
            },
        )

    def _assume_role(self, base: dict[str, Any], region: str, endpoint: str | None, opts: AwsStsOptions,
                     request: dict[str, Any]) -> dict[str, Any]:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
        except ImportError:
            raise ConfigError("the aws-sts issuer needs boto3: pip install 'runlease[aws]'") from None
        extra = base.get("extra") or {}
        session = boto3.session.Session(
            aws_access_key_id=base.get("login") or None,
            aws_secret_access_key=base.get("password") or None,
            aws_session_token=extra.get("aws_session_token") or None,
            region_name=region,
        )
        config = Config(connect_timeout=opts.connect_timeout, read_timeout=opts.read_timeout,
                        retries={"total_max_attempts": 2, "mode": "standard"})
        where = _where(region, endpoint)
        try:
            client = session.client("sts", endpoint_url=endpoint, config=config)
            with quiet_botocore():  # the response holds the new secret key and session token
                return client.assume_role(**request)
        except PartialCredentialsError:
            raise ConfigError("aws-sts: the stored connection (or the environment) has only half of an access "
                              "key: login = access key id and password = secret key go together") from None
        except NoCredentialsError:
            raise ConfigError("aws-sts: the stored connection has no credentials and none were found "
                              "in the environment") from None
        except ClientError as err:
            error = err.response.get("Error", {})
            raise BackendError(
                f"AWS STS at {where} refused AssumeRole on {opts.role_arn}: "
                f"{error.get('Code', 'error')}: {error.get('Message', '')}"
            ) from None
        except BotoCoreError as err:
            detail = scrub(str(err), base.get("password"), extra.get("aws_session_token"))
            raise BackendError(f"cannot reach AWS STS at {where}: {type(err).__name__}: {detail}") from None

    def revoke(self, lease: Lease) -> None:
        """Nothing to destroy: an STS session cannot be ended early (see the module docstring)."""
        log.info("aws-sts lease %s revoked; STS session %s cannot be ended early and expires %s s after issue",
                 lease.lease_id, lease.issuer_state.get("session_name"), lease.issuer_state.get("duration_s"))


def _where(region: str, endpoint: str | None) -> str:
    return endpoint or f"https://sts.{region}.amazonaws.com"
