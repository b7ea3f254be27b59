"""boto3 clients for runlease's AWS adapters: credentials, timeouts, and what errors mean.

Shared by the Secrets Manager store and the KMS key wrapping so both resolve
credentials the same way: the standard AWS chain (environment, shared
config/profile, web identity, container and instance roles), optionally
followed by an AssumeRole into a dedicated role. The assumed-role
credentials refresh themselves before they expire (botocore's refreshable
credentials), so a long-running scheduler never holds stale keys.

Every client has explicit connect/read timeouts and a bounded retry budget,
so an unreachable endpoint fails in bounded time with an error naming the
endpoint. A credentials-class error (AccessDenied, expired or unrecognised
token) gets exactly one fresh session -- re-reading the chain and
re-assuming the role, the AWS equivalent of a Vault re-login -- and one
retry; a second refusal is a :class:`StoreAccessDeniedError` naming the
service, the operation and the IAM action that is missing.

boto3/botocore are imported inside functions so ``import runlease`` stays light.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from runlease.botolog import quiet_botocore
from runlease.errors import ConfigError, StoreAccessDeniedError, StoreUnavailableError

T = TypeVar("T")

#: Error codes that mean "these credentials are not (or no longer) good enough".
DENIED_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
    "ExpiredToken", "ExpiredTokenException", "InvalidSignatureException", "SignatureDoesNotMatch",
    "IncompleteSignature", "MissingAuthenticationToken", "KMSAccessDeniedException",
})


class AwsConnectionOptions(BaseModel):
    """Region, endpoint, credentials and time limits for one AWS service client."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: AWS region; defaults to the standard chain (``AWS_REGION``/``AWS_DEFAULT_REGION``/profile).
    region: str | None = None
    #: Endpoint override (moto, LocalStack, VPC endpoints); defaults to AWS's own.
    endpoint_url: str | None = None
    #: Named profile from ~/.aws/config.
    profile: str | None = None
    #: Role to assume on top of the standard chain (least-privilege role for runlease).
    role_arn: str | None = None
    role_session_name: str = Field(default="runlease", min_length=2, max_length=64)
    external_id: str | None = None
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    read_timeout: float = Field(default=15.0, gt=0, le=300)
    #: Total attempts per call (first try included) for throttling and transient network errors.
    max_attempts: int = Field(default=3, ge=1, le=10)


def error_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str((response.get("Error") or {}).get("Code") or "")


class AwsService:
    """A lazily built boto3 client for one service, with one session refresh on 403-class errors."""

    def __init__(self, service: str, options: AwsConnectionOptions, *, label: str) -> None:
        self.service = service
        self.options = options
        self.label = label
        self._lock = threading.Lock()
        self._client: Any = None
        #: How many sessions were built (1 normally; 2 after a credentials refresh).
        self.sessions = 0

    def describe(self) -> str:
        where = self.options.endpoint_url or "the AWS endpoint"
        return f"{self.label} at {where} (region {self._region() or 'unset'})"

    def _region(self) -> str | None:
        if self._client is not None:
            return str(self._client.meta.region_name)
        return self.options.region

    def _session(self) -> Any:
        import boto3

        base = boto3.Session(profile_name=self.options.profile, region_name=self.options.region)
        if not self.options.role_arn:
            return base
        return _assumed_role_session(base, self.options)

    def _build(self) -> Any:
        from botocore.config import Config
        from botocore.exceptions import NoRegionError, ProfileNotFound

        config = Config(
            connect_timeout=self.options.connect_timeout,
            read_timeout=self.options.read_timeout,
            retries={"max_attempts": self.options.max_attempts, "mode": "standard"},
        )
        try:
            session = self._session()
            client = session.client(self.service, endpoint_url=self.options.endpoint_url, config=config)
        except NoRegionError:
            raise ConfigError(f"{self.label}: no AWS region; set the 'region' option or AWS_REGION") from None
        except ProfileNotFound as err:
            raise ConfigError(f"{self.label}: {err}") from None
        self.sessions += 1
        return client

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def refresh(self, stale: Any) -> Any:
        with self._lock:
            if self._client is stale:
                self._client = self._build()
            return self._client

    def call(self, action: str, what: str, fn: Callable[[Any], T], *, passthrough: frozenset[str] = frozenset()) -> T:
        """Run ``fn(client)``; map transport/credential failures to clear runlease errors.

        ``action`` is the IAM action (``secretsmanager:GetSecretValue``) named in
        a denial; error codes in ``passthrough`` are re-raised for the caller to
        interpret (not found, conflicts).
        """
        # Every call runs quiet: GetSecretValue / KMS Decrypt / AssumeRole responses
        # and signed request headers hold credentials that botocore logs at DEBUG.
        with quiet_botocore():
            client = self.client()
            try:
                return self._transport(what, lambda: fn(client), passthrough)
            except _Denied:
                pass
            client = self.refresh(client)
            try:
                return self._transport(what, lambda: fn(client), passthrough)
            except _Denied as denied:
                raise StoreAccessDeniedError(
                    f"{self.describe()} refused {what} ({denied.code}) even with freshly loaded credentials; "
                    f"the caller needs {action}"
                ) from None

    def _transport(self, what: str, fn: Callable[[], T], passthrough: frozenset[str]) -> T:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        try:
            return fn()
        except NoCredentialsError:
            raise StoreAccessDeniedError(
                f"{self.label}: no AWS credentials found while {what} (environment, profile, web identity, "
                "container or instance role)"
            ) from None
        except (ConnectTimeoutError, ReadTimeoutError):
            raise StoreUnavailableError(
                f"{self.describe()} did not answer within {self.options.connect_timeout:g}s/"
                f"{self.options.read_timeout:g}s while {what}"
            ) from None
        except (EndpointConnectionError, ConnectionClosedError):
            raise StoreUnavailableError(f"{self.describe()} is unreachable while {what}; check the endpoint and network") from None
        except ClientError as err:
            code = error_code(err)
            if code in passthrough:
                raise
            status = (getattr(err, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in DENIED_CODES or status == 403:  # any 403 is about who is asking
                raise _Denied(code if code and not code.isdigit() else "HTTP 403") from None
            raise StoreUnavailableError(f"{self.describe()} answered {code or 'an error'} (HTTP {status}) while {what}") from None


class _Denied(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _assumed_role_session(base: Any, options: AwsConnectionOptions) -> Any:
    """A boto3 session whose credentials come from AssumeRole and refresh before they expire."""
    import boto3
    import botocore.session
    from botocore.config import Config
    from botocore.credentials import CredentialProvider, DeferredRefreshableCredentials

    sts = base.client(
        "sts",
        endpoint_url=options.endpoint_url,
        config=Config(connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
                      retries={"max_attempts": options.max_attempts, "mode": "standard"}),
    )

    def fetch() -> dict[str, Any]:
        kwargs: dict[str, Any] = {"RoleArn": options.role_arn, "RoleSessionName": options.role_session_name}
        if options.external_id:
            kwargs["ExternalId"] = options.external_id
        from botocore.exceptions import ClientError

        try:
            creds = sts.assume_role(**kwargs)["Credentials"]
        except ClientError as err:
            raise StoreAccessDeniedError(
                f"could not assume {options.role_arn} ({error_code(err)}); the base credentials need "
                "sts:AssumeRole on it and the role's trust policy must allow them"
            ) from None
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    class AssumeRoleProvider(CredentialProvider):
        METHOD = "runlease-assume-role"
        CANONICAL_NAME = "runlease-assume-role"

        def load(self) -> Any:
            return DeferredRefreshableCredentials(refresh_using=fetch, method=self.METHOD)

    core = botocore.session.Session()
    # First in the chain: this session's credentials always come from the assumed role.
    core.get_component("credential_provider").insert_before("env", AssumeRoleProvider())
    return boto3.Session(botocore_session=core, region_name=base.region_name)
