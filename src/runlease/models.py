"""Domain models shared by every layer: paths, stages, identities, leases, audit events.

They are pydantic v2 models so the CLI, the ledger and the adapters validate
input the same way and serialize it without hand-written code. None of them
ever holds a plaintext value in a field that is serialized or repr'd: the
credential of a :class:`Lease` is a :class:`pydantic.Secret`.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime, timezone
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, Secret, model_validator

from runlease.errors import InvalidPathError

#: Secret kinds the broker knows how to hand out. ``connections`` hold
#: Airflow-compatible connection dicts; the others hold strings.
KINDS: frozenset[str] = frozenset({"connections", "variables", "config", "tokens"})

_ENV_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

#: What a stored secret decrypts to: a connection dict or a plain string.
SecretValue = Union[dict[str, Any], str]


def utcnow() -> datetime:
    """Timezone-aware UTC now; one function so tests and callers agree on tz."""
    return datetime.now(timezone.utc)


class Stage(str, enum.Enum):
    """Labels on versions, as in AWS Secrets Manager (AWSCURRENT/AWSPENDING/AWSPREVIOUS)."""

    CURRENT = "CURRENT"
    PENDING = "PENDING"
    PREVIOUS = "PREVIOUS"


class Capability(str, enum.Enum):
    """What a policy grant allows. ``admin`` implies every other capability."""

    READ = "read"
    LEASE = "lease"
    ROTATE = "rotate"
    ADMIN = "admin"


class SecretPath(BaseModel):
    """``<environment>/<kind>/<name>``, e.g. ``prod/connections/warehouse``.

    Environments are separate namespaces: nothing in runlease resolves a path
    across them, so the environment is a mandatory, validated part of the
    path rather than a tag. Validation errors name the part that is wrong.
    """

    model_config = ConfigDict(frozen=True)

    env: str
    kind: str
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _split_path(data)
        return data

    @model_validator(mode="after")
    def _check_parts(self) -> "SecretPath":
        _check_parts(self.env, self.kind, self.name)
        return self

    @classmethod
    def parse(cls, text: str) -> "SecretPath":
        """Parse ``env/kind/name``; raises :class:`InvalidPathError` naming the bad part."""
        if not isinstance(text, str):
            raise InvalidPathError(f"secret path must be a string, got {type(text).__name__}")
        return cls.of(**_split_path(text))

    @classmethod
    def of(cls, env: str, kind: str, name: str) -> "SecretPath":
        """Build from parts, raising :class:`InvalidPathError` (not pydantic's wrapper)."""
        _check_parts(env, kind, name)
        return cls.model_construct(env=env, kind=kind, name=name)

    def __str__(self) -> str:
        return f"{self.env}/{self.kind}/{self.name}"


def _check_parts(env: str, kind: str, name: str) -> None:
    _check_env(env)
    if kind not in KINDS:
        raise InvalidPathError(
            f"invalid secret path kind {kind!r}: expected one of {', '.join(sorted(KINDS))}"
        )
    if not _NAME_RE.fullmatch(name):
        raise InvalidPathError(
            f"invalid secret path name {name!r}: use 1-128 of A-Z a-z 0-9 _ . - "
            "(not starting with . or -)"
        )


def _check_env(env: str) -> None:
    if not _ENV_RE.fullmatch(env):
        raise InvalidPathError(
            f"invalid secret path environment {env!r}: use lowercase letters, digits and '-', "
            "starting with a letter (e.g. dev, stage, prod)"
        )


def _split_path(text: str) -> dict[str, str]:
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidPathError(
            f"invalid secret path {text!r}: expected <environment>/<kind>/<name>, "
            "e.g. prod/connections/warehouse"
        )
    return {"env": parts[0], "kind": parts[1], "name": parts[2]}


def resolve_ref(ref: str, default_env: str, default_kind: str = "connections") -> SecretPath:
    """Turn a full path or a bare ID (an Airflow ``conn_id``) into a :class:`SecretPath`.

    A bare ID has no ``/``; it is looked up in ``default_env`` under
    ``default_kind``. Anything with a ``/`` must be a full three-part path, so a
    typo never silently lands in another environment.
    """
    if "/" in ref:
        return SecretPath.parse(ref)
    return SecretPath.of(default_env, default_kind, ref)


class SecretVersion(BaseModel):
    """Metadata of one immutable version (never the value)."""

    path: SecretPath
    version: int = Field(ge=1)
    created_at: datetime
    stages: list[Stage] = Field(default_factory=list)
    deprecated: bool = False


class SecretInfo(BaseModel):
    """A secret's listing row: where its stages point and whether it is deleted."""

    path: SecretPath
    stages: dict[Stage, int] = Field(default_factory=dict)
    versions: int = 0
    created_at: datetime
    updated_at: datetime
    deleted: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


#: Identity fields a verifier can vouch for (``workload`` is the verified subject itself).
IDENTITY_FIELDS: tuple[str, ...] = ("orchestrator", "pipeline", "run_id", "task_id", "try_number", "map_index")


class Verification(BaseModel):
    """What a trusted party proved about a caller, as opposed to what the caller says.

    Built only by code on the trusted side of the boundary: the Airflow API
    server (the task instance named by the Execution API token Airflow
    validated, looked up in Airflow's metadata database) or ``runlease serve``
    (an OIDC token checked against its issuer's JWKS). ``fields`` lists which
    :class:`RunIdentity` fields came from that proof; every other field is a
    claim. Never built from a header, an environment variable or a request body.
    """

    model_config = ConfigDict(frozen=True)

    #: How it was proved: ``airflow-execution-api`` or ``oidc``.
    method: str = Field(min_length=1, max_length=64)
    #: The proven subject: a task instance id, or a token's ``sub``
    #: (``system:serviceaccount:<ns>:<sa>``).
    subject: str = Field(min_length=1, max_length=512)
    #: The token issuer (``iss``), when there is one.
    issuer: str | None = Field(default=None, max_length=512)
    #: Which RunIdentity fields the proof covers (subset of :data:`IDENTITY_FIELDS`).
    fields: tuple[str, ...] = ()
    #: Small non-secret verified claims worth auditing (pod name, namespace, ...).
    claims: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_fields(self) -> "Verification":
        unknown = set(self.fields) - set(IDENTITY_FIELDS)
        if unknown:
            raise ValueError(f"unknown verified field(s): {', '.join(sorted(unknown))}")
        return self

    def audit_detail(self) -> dict[str, Any]:
        """What an audit event records of this proof (names only, never a token)."""
        detail: dict[str, Any] = {"method": self.method, "subject": self.subject, "fields": list(self.fields)}
        if self.issuer:
            detail["issuer"] = self.issuer
        if self.claims:
            detail["claims"] = dict(self.claims)
        return detail


class RunIdentity(BaseModel):
    """Who is asking: the run, task and try a credential is bound to.

    ``subject`` (``orchestrator:pipeline:task``) is what policy principal
    patterns match against; ``principal`` names the workload identity (a
    service account, a Unix user) when the orchestrator has one.

    Every field is a *claim* unless ``verification`` says a trusted party
    proved it (:meth:`is_verified`). Policy that separates tenants must rest on
    verified fields: grants with ``workloads`` match only a verified workload,
    and ``require_verified`` grants only identities whose pipeline was proven.
    """

    model_config = ConfigDict(frozen=True)

    orchestrator: str = Field(min_length=1, max_length=64)
    pipeline: str = Field(min_length=1, max_length=250)
    run_id: str | None = Field(default=None, max_length=250)
    task_id: str | None = Field(default=None, max_length=250)
    try_number: int | None = Field(default=None, ge=0)
    map_index: int | None = None
    principal: str | None = Field(default=None, max_length=250)
    verification: Verification | None = None

    @property
    def subject(self) -> str:
        return f"{self.orchestrator}:{self.pipeline}:{self.task_id or '-'}"

    def is_verified(self, field: str) -> bool:
        """True when ``field`` was proven by a trusted party, not merely claimed."""
        return self.verification is not None and field in self.verification.fields

    @property
    def workload(self) -> str | None:
        """The verified workload subject (an OIDC ``sub``), or None when nothing vouches for one."""
        if self.verification is not None and self.verification.method == "oidc":
            return self.verification.subject
        return None

    @property
    def verified_fields(self) -> tuple[str, ...]:
        return self.verification.fields if self.verification is not None else ()


class LeaseState(str, enum.Enum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class Lease(BaseModel):
    """A credential handed to one run/task/try, valid until revoked or expired.

    ``credential`` is a :class:`pydantic.Secret`: it prints as ``**********``
    and is excluded from ``model_dump``, so a lease can be logged or stored
    without leaking. Call ``lease.value`` to get the plaintext.
    """

    lease_id: str
    path: SecretPath
    version: int
    stage: Stage | None = Stage.CURRENT
    identity: RunIdentity
    issuer: str
    issued_at: datetime
    expires_at: datetime
    state: LeaseState = LeaseState.ACTIVE
    revoked_at: datetime | None = None
    revoke_reason: str | None = None
    #: Non-secret facts the issuer needs to revoke (a role name, a Vault lease id).
    issuer_state: dict[str, Any] = Field(default_factory=dict)
    credential: Secret[Any] | None = Field(default=None, exclude=True, repr=False)

    def __getstate__(self) -> dict[Any, Any]:
        """Pickle without the credential: a pickled lease (a cache file, an XCom, a multiprocessing
        queue) must not carry the plaintext. The unpickled lease behaves like one read from the ledger."""
        state = super().__getstate__()
        state["__dict__"] = {**state["__dict__"], "credential": None}
        return state

    @property
    def value(self) -> SecretValue:
        """The plaintext credential. Raises if this lease was loaded from the ledger."""
        if self.credential is None:
            raise LookupError(f"lease {self.lease_id} carries no credential (loaded from the ledger)")
        return self.credential.get_secret_value()


class Outcome(str, enum.Enum):
    OK = "ok"
    DENIED = "denied"
    ERROR = "error"


class AuditEvent(BaseModel):
    """One audit record: who did what to which path/version/lease, and how it went.

    It has no field for a value on purpose. ``detail`` carries small
    non-secret facts (ttl, reason, rotation step); the broker only ever puts
    names and numbers there.
    """

    seq: int | None = None
    ts: datetime = Field(default_factory=utcnow)
    action: str
    outcome: Outcome = Outcome.OK
    path: str | None = None
    version: int | None = None
    lease_id: str | None = None
    orchestrator: str | None = None
    pipeline: str | None = None
    run_id: str | None = None
    task_id: str | None = None
    try_number: int | None = None
    map_index: int | None = None
    principal: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    key_id: str | None = None
    chain: str | None = None

    @classmethod
    def for_identity(cls, identity: RunIdentity | None, **fields: Any) -> "AuditEvent":
        """Build an event with the identity's fields flattened (queryable columns)."""
        if identity is not None:
            fields.setdefault("orchestrator", identity.orchestrator)
            fields.setdefault("pipeline", identity.pipeline)
            fields.setdefault("run_id", identity.run_id)
            fields.setdefault("task_id", identity.task_id)
            fields.setdefault("try_number", identity.try_number)
            fields.setdefault("map_index", identity.map_index)
            fields.setdefault("principal", identity.principal or identity.subject)
            if identity.verification is not None:
                # Which fields were proven and by what; everything else in the event is a claim.
                detail = dict(fields.get("detail") or {})
                detail.setdefault("verified", identity.verification.audit_detail())
                fields["detail"] = detail
        return cls(**fields)
