"""Shared setup for the rotation tests: secrets with policies on real targets, and leak scans.

Each ``*_target`` function stocks a runtime with a secret that rotates
against a real system (the throwaway PostgreSQL server, moto over HTTP) and
returns a :class:`Target` that can tell, *independently of the rotator's own
code*, whether a stored value authenticates right now.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from runlease.broker import secret_strings
from runlease.ledger.base import AuditQuery
from runlease.models import RunIdentity, SecretPath, SecretValue
from runlease.rotation.policy import RotationPolicy
from runlease.runtime import Runtime

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests", task_id="rotate", principal="cli:tests")
REGION = "eu-west-1"


@dataclass
class Target:
    """A secret that rotates, and an outside check of whether a value works in its target."""

    rotator: str
    path: SecretPath
    works: Callable[[SecretValue], bool]
    #: Target-side facts a test checks after retire (e.g. IAM key status).
    extra: dict[str, Any] = field(default_factory=dict)


def set_policy(rt: Runtime, path: SecretPath, rotator: str, grace_s: int = 0, interval_s: int = 30 * 86400,
               **settings: Any) -> None:
    policy = RotationPolicy(rotator=rotator, interval_s=interval_s, grace_s=grace_s, owner="ml-platform",
                            settings=settings)
    rt.store.update_metadata(path, policy.to_metadata())


def token_target(rt: Runtime, name: str = "client_key", grace_s: int = 0) -> Target:
    path = SecretPath.parse(f"dev/tokens/{name}")
    rt.broker.put(path, "rk_" + secrets.token_urlsafe(32), ADMIN)
    set_policy(rt, path, "token", grace_s=grace_s, prefix="rk_")
    return Target("token", path, lambda v: isinstance(v, str) and rt.broker.verify_presented_key(path, v))


def pg_login(conn: dict[str, Any]) -> bool:
    """A real login with a stored connection: True if the server lets it in."""
    import psycopg

    try:
        with psycopg.connect(host=str(conn["host"]), port=str(conn["port"]), dbname=str(conn["schema"]),
                             user=str(conn["login"]), password=str(conn["password"]), connect_timeout=10) as c:
            return c.execute("SELECT count(*) FROM facts").fetchone()[0] == 2
    except psycopg.OperationalError:
        return False


def postgres_target(rt: Runtime, server: Any, dbname: str, grace_s: int = 0, role: str | None = None) -> Target:
    """A login role ``<role>`` (grants through a parent role), an admin with CREATEROLE, and the secret."""
    from psycopg import sql

    tag = secrets.token_hex(4)
    role = role or f"app_{tag}"
    admin, admin_pw, parent = f"rot_admin_{tag}", secrets.token_urlsafe(18), f"app_rw_{tag}"
    password = secrets.token_urlsafe(18)
    server.execute(
        sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD {}").format(sql.Identifier(admin), sql.Literal(admin_pw)),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(parent)),
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(sql.Identifier(parent), sql.Identifier(admin)),
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
            sql.Identifier(role), sql.Literal(password), sql.Identifier(parent)),
    )
    server.execute(
        "CREATE TABLE IF NOT EXISTS facts (id int PRIMARY KEY, label text)",
        "INSERT INTO facts VALUES (1, 'one'), (2, 'two') ON CONFLICT DO NOTHING",
        sql.SQL("GRANT SELECT ON facts TO {}").format(sql.Identifier(parent)),
        dbname=dbname,
    )
    admin_path = SecretPath.parse(f"dev/connections/pg_admin_{tag}")
    rt.broker.put(admin_path, {"conn_type": "postgres", "host": server.host, "port": server.port, "login": admin,
                               "password": admin_pw, "schema": dbname, "extra": {"sslmode": "disable"}}, ADMIN)
    path = SecretPath.parse(f"dev/connections/app_db_{tag}")
    rt.broker.put(path, {"conn_type": "postgres", "host": server.host, "port": server.port, "login": role,
                         "password": password, "schema": dbname, "extra": {"sslmode": "disable"}}, ADMIN)
    set_policy(rt, path, "postgres", grace_s=grace_s, admin=str(admin_path), parent_role=parent)
    return Target("postgres", path, lambda v: isinstance(v, dict) and pg_login(v),
                  extra={"role": role, "admin_password": admin_pw})


def aws_client(endpoint: str, service: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION if service != "iam" else "us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _aws_admin(rt: Runtime, tag: str) -> str:
    admin_path = f"dev/connections/aws_admin_{tag}"
    rt.broker.put(admin_path, {"conn_type": "aws", "login": "testing", "password": "testing", "extra": {}}, ADMIN)  # runlease: allow secret-assignment (moto accepts any key)
    return admin_path


def iam_target(rt: Runtime, endpoint: str, grace_s: int = 0, delete_on_retire: bool = True) -> Target:
    """An IAM user with one access key, held by the secret as an Airflow aws connection."""
    iam = aws_client(endpoint, "iam")
    tag = secrets.token_hex(4)
    user = f"etl-{tag}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    path = SecretPath.parse(f"dev/connections/aws_etl_{tag}")
    rt.broker.put(path, {"conn_type": "aws", "login": key["AccessKeyId"], "password": key["SecretAccessKey"],
                         "extra": {"region_name": REGION, "endpoint_url": endpoint}}, ADMIN)
    set_policy(rt, path, "aws-iam-key", grace_s=grace_s, user=user, endpoint_url=endpoint, region=REGION,
               admin=_aws_admin(rt, tag), test_attempts=1, test_delay_s=0, delete_on_retire=delete_on_retire)

    def works(value: SecretValue) -> bool:
        """Active, this user's, and STS answers with the user's ARN when signed with it."""
        if not isinstance(value, dict):
            return False
        keys = {k["AccessKeyId"]: k["Status"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]}
        if keys.get(value["login"]) != "Active":
            return False
        import boto3

        sts = boto3.client("sts", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=value["login"],
                           aws_secret_access_key=value["password"])
        return sts.get_caller_identity()["Arn"].endswith(f":user/{user}")

    return Target("aws-iam-key", path, works, extra={"user": user, "iam": iam})


def sm_target(rt: Runtime, endpoint: str, grace_s: int = 0) -> Target:
    """A Secrets Manager secret (the target) and the runlease secret that mirrors it."""
    sm = aws_client(endpoint, "secretsmanager")
    tag = secrets.token_hex(4)
    name = f"serving/api-key-{tag}"
    value = "sk_" + secrets.token_urlsafe(32)
    sm.create_secret(Name=name, SecretString=value)
    path = SecretPath.parse(f"dev/tokens/serving_key_{tag}")
    rt.broker.put(path, value, ADMIN)
    set_policy(rt, path, "aws-secretsmanager", grace_s=grace_s, secret_id=name, endpoint_url=endpoint,
               region=REGION, admin=_aws_admin(rt, tag), prefix="sk_")

    def works(candidate: SecretValue) -> bool:
        """What a direct Secrets Manager reader accepts: AWSCURRENT or AWSPREVIOUS (explicit stages)."""
        for stage in ("AWSCURRENT", "AWSPREVIOUS"):
            try:
                if sm.get_secret_value(SecretId=name, VersionStage=stage)["SecretString"] == candidate:
                    return True
            except sm.exceptions.ResourceNotFoundException:
                continue
        return False

    return Target("aws-secretsmanager", path, works, extra={"secret_id": name, "sm": sm})


def values_of(rt: Runtime, path: SecretPath) -> list[str]:
    """Every secret string any version of ``path`` ever held (old and new passwords, keys, tokens)."""
    out: list[str] = []
    for version in rt.store.history(path):
        value = rt.store.get(path, version=version.version).value
        out.extend(secret_strings(value))
        if isinstance(value, dict) and value.get("conn_type") == "aws":
            out.append(str(value["login"]))  # access key ids too: they are half of a credential
    return out


def leaks(needles: Iterable[str], *texts: str) -> list[str]:
    haystack = "\n".join(texts)
    return sorted({n for n in needles if n and n in haystack})


def trail_text(rt: Runtime) -> str:
    """Everything the ledger and the metadata say: audit events, rotation state, policies."""
    events = [e.model_dump_json() for e in rt.ledger.events(AuditQuery())]
    meta = [json.dumps(info.metadata, default=str) for info in rt.store.list()]
    return "\n".join(events + meta)


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(self.format(record))


@contextmanager
def debug_logs(sink: list[str]) -> Iterator[None]:
    """Every log record (DEBUG and up, botocore and psycopg included) emitted inside the block.

    Used around the engine's calls only: the tests' own boto3 clients log
    what *they* send, which says nothing about runlease.
    """
    root = logging.getLogger()
    handler, level = _Collect(sink), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
