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
import os
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runlease.clients.botolog import quiet_botocore
from runlease.errors import ConfigError, StoreAccessDeniedError, StoreUnavailableError

T = TypeVar("T")

#: Error codes that mean "these credentials are not (or no longer) good enough".
DENIED_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId",
    "ExpiredToken", "ExpiredTokenException", "InvalidSignatureException", "SignatureDoesNotMatch",
    "IncompleteSignature", "MissingAuthenticationToken", "KMSAccessDeniedException",
})


#: AWS region names (``eu-west-1``, ``us-gov-east-1``, ``cn-north-1``, ``eu-central-2``).
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"
#: Environment variables botocore reads an endpoint from, per service (named in errors when in use).
_ENDPOINT_ENV = {"secretsmanager": "AWS_ENDPOINT_URL_SECRETS_MANAGER", "kms": "AWS_ENDPOINT_URL_KMS",
                 "sts": "AWS_ENDPOINT_URL_STS", "iam": "AWS_ENDPOINT_URL_IAM"}
#: botocore ``Config`` keys that ``config_kwargs`` may set (timeouts and retries have their own options).
CONFIG_KWARGS = frozenset({
    "user_agent_extra", "max_pool_connections", "proxies", "proxies_config", "s3", "signature_version",
    "tcp_keepalive", "client_cert", "inject_host_prefix", "use_dualstack_endpoint", "use_fips_endpoint",
    "request_min_compression_size_bytes", "disable_request_compression", "sigv4a_signing_region_set",
    "request_checksum_calculation", "response_checksum_validation", "account_id_endpoint_mode",
})


class AwsConnectionOptions(BaseModel):
    """Region, endpoint, credentials and time limits for one AWS service client.

    The client settings mirror what Airflow's own AWS secrets backend offers
    (``verify``, ``config_kwargs``, ``assume_role_method``/``assume_role_kwargs``)
    so a team switching backends keeps its network and identity setup.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: AWS region; defaults to the standard chain (``AWS_REGION``/``AWS_DEFAULT_REGION``/profile).
    region: str | None = Field(default=None, pattern=REGION_PATTERN)
    #: Endpoint override (moto, LocalStack, VPC endpoints); defaults to AWS's own.
    endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    #: TLS verification: False, or a CA bundle path (a TLS-inspecting proxy, a private VPC endpoint).
    verify: bool | str | None = None
    #: HTTP(S) proxies, e.g. ``{"https": "http://proxy:3128"}`` (botocore's ``proxies``).
    proxies: dict[str, str] | None = None
    #: Further botocore ``Config`` settings (see :data:`CONFIG_KWARGS`).
    config_kwargs: dict[str, Any] | None = None
    #: Named profile from ~/.aws/config.
    profile: str | None = None
    #: Role to assume on top of the standard chain (least-privilege role for runlease).
    role_arn: str | None = Field(default=None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]+$")
    role_session_name: str = Field(default="runlease", min_length=2, max_length=64)
    external_id: str | None = None
    #: How to assume ``role_arn``: with the base credentials, or with an OIDC token (EKS, GitHub, ...).
    assume_role_method: Literal["assume_role", "assume_role_with_web_identity"] = "assume_role"
    #: The OIDC token file for ``assume_role_with_web_identity`` (default: ``AWS_WEB_IDENTITY_TOKEN_FILE``).
    web_identity_token_file: str | None = None
    #: STS endpoint for the role assumption (default: ``endpoint_url``, then AWS's own).
    sts_endpoint_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+(/\S*)?$")
    #: Further AssumeRole parameters (``DurationSeconds``, ``Policy``, ``Tags``, ...).
    assume_role_kwargs: dict[str, Any] | None = None
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    read_timeout: float = Field(default=15.0, gt=0, le=300)
    #: Total attempts per call, the first included (botocore's ``total_max_attempts``), for
    #: throttling and transient network errors. Worst case per call on a silent endpoint:
    #: max_attempts x (connect_timeout + read_timeout) plus backoff (< 1 s + 2 s + ...).
    max_attempts: int = Field(default=3, ge=1, le=10)

    @field_validator("config_kwargs")
    @classmethod
    def _known_config_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(value or {}) - CONFIG_KWARGS)
        if unknown:
            raise ValueError(f"unsupported botocore Config keys {unknown} (timeouts and retries have their own "
                             f"options; allowed: {', '.join(sorted(CONFIG_KWARGS))})")
        return value

    @field_validator("assume_role_kwargs")
    @classmethod
    def _no_overlap(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        taken = sorted(set(value or {}) & {"RoleArn", "RoleSessionName", "ExternalId", "WebIdentityToken"})
        if taken:
            raise ValueError(f"{taken} have their own options (role_arn, role_session_name, external_id, "
                             "web_identity_token_file)")
        return value

    @model_validator(mode="after")
    def _role_for_method(self) -> "AwsConnectionOptions":
        if self.assume_role_method == "assume_role_with_web_identity" and not self.role_arn:
            raise ValueError("assume_role_method 'assume_role_with_web_identity' needs role_arn")
        return self

    def botocore_config(self) -> Any:
        """The client Config: explicit timeouts and total attempts win over ``config_kwargs``."""
        from botocore.config import Config

        base = dict(self.config_kwargs or {})
        if self.proxies:
            base["proxies"] = dict(self.proxies)
        return Config(**base).merge(Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},
        ))


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
        return f"{self.label} at {self._endpoint()} (region {self._region() or 'unset'})"

    def _endpoint(self) -> str:
        """The endpoint in use, and where it came from when that was the environment."""
        if self.options.endpoint_url:
            return self.options.endpoint_url
        for var in (_ENDPOINT_ENV.get(self.service), "AWS_ENDPOINT_URL"):
            if var and os.environ.get(var):
                return f"{os.environ[var]} (from {var})"
        if self._client is not None:
            return str(self._client.meta.endpoint_url)
        return "the AWS endpoint"

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
        from botocore.exceptions import InvalidRegionError, NoRegionError, PartialCredentialsError, ProfileNotFound

        config = self.options.botocore_config()
        try:
            session = self._session()
            client = session.client(self.service, endpoint_url=self.options.endpoint_url, config=config,
                                    verify=self.options.verify)
        except NoRegionError:
            raise ConfigError(f"{self.label}: no AWS region; set the 'region' option or AWS_REGION") from None
        except InvalidRegionError:
            raise ConfigError(f"{self.label}: the AWS region (option 'region', AWS_REGION or AWS_DEFAULT_REGION "
                              "or the profile) is not a valid region name") from None
        except PartialCredentialsError as err:
            raise ConfigError(f"{self.label}: {_partial(err)}") from None
        except ProfileNotFound as err:
            raise ConfigError(f"{self.label}: {err}") from None
        except ValueError as err:  # botocore: an endpoint from AWS_ENDPOINT_URL* without scheme or host
            if "endpoint" in str(err).lower():
                raise ConfigError(f"{self.label}: the endpoint {self._endpoint()} is not a URL "
                                  "(it needs a scheme, e.g. https://)") from None
            raise
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
            PartialCredentialsError,
            ReadTimeoutError,
        )

        try:
            return fn()
        except PartialCredentialsError as err:
            raise ConfigError(f"{self.label}: {_partial(err)}") from None
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


def _partial(err: Exception) -> str:
    """Which credential setting is missing, from botocore's error (it names the provider and field, no value)."""
    provider = getattr(err, "kwargs", {}).get("provider", "the credential source")
    missing = getattr(err, "kwargs", {}).get("cred_var", "a field")
    names = {"env": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (environment)",
             "shared-credentials-file": "aws_access_key_id and aws_secret_access_key (~/.aws/credentials)",
             "config-file": "aws_access_key_id and aws_secret_access_key (~/.aws/config)"}
    return (f"partial AWS credentials from {provider}: {missing} is missing; set both of "
            f"{names.get(str(provider), 'the access key id and the secret key')}")


class _Denied(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _assumed_role_session(base: Any, options: AwsConnectionOptions) -> Any:
    """A boto3 session whose credentials come from AssumeRole(WithWebIdentity) and refresh before they expire."""
    import boto3
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.credentials import CredentialProvider, DeferredRefreshableCredentials

    web = options.assume_role_method == "assume_role_with_web_identity"
    config = options.botocore_config()
    if web:  # the OIDC token is the proof; no base credentials are needed (or wanted) to sign
        config = config.merge(Config(signature_version=UNSIGNED))
    sts = base.client("sts", endpoint_url=options.sts_endpoint_url or options.endpoint_url, config=config,
                      verify=options.verify)

    def token() -> str:
        where = options.web_identity_token_file or os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        if not where:
            raise ConfigError("assume_role_with_web_identity: set 'web_identity_token_file' or "
                              "AWS_WEB_IDENTITY_TOKEN_FILE")
        try:
            with open(where, encoding="utf-8") as fh:  # re-read on every refresh: the token file rotates
                return fh.read().strip()
        except OSError as err:
            raise ConfigError(f"assume_role_with_web_identity: cannot read the token file {where} "
                              f"({err.strerror})") from None

    def fetch() -> dict[str, Any]:
        kwargs: dict[str, Any] = {**(options.assume_role_kwargs or {}),
                                  "RoleArn": options.role_arn, "RoleSessionName": options.role_session_name}
        if options.external_id and not web:
            kwargs["ExternalId"] = options.external_id
        from botocore.exceptions import ClientError

        try:
            if web:
                creds = sts.assume_role_with_web_identity(WebIdentityToken=token(), **kwargs)["Credentials"]
            else:
                creds = sts.assume_role(**kwargs)["Credentials"]
        except ClientError as err:
            need = ("the role's trust policy must allow the token's issuer and subject" if web else
                    "the base credentials need sts:AssumeRole on it and the role's trust policy must allow them")
            raise StoreAccessDeniedError(f"could not assume {options.role_arn} ({error_code(err)}); {need}") from None
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
