"""Helpers shared by the store tests (options for OpenBao and moto, ports, cleanup)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from runlease.models import SecretPath
from support.openbao import OpenBao


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / f"vault-token-{uuid.uuid4().hex[:8]}"
    path.write_text(token)
    path.chmod(0o600)
    return path


def vault_options(bao: OpenBao, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """Store options for the OpenBao server, logging in with the root token from a file."""
    opts: dict[str, Any] = {
        "address": bao.url,
        "prefix": f"rltest-{uuid.uuid4().hex[:10]}",
        "timeout": 5,
        "auth": {"method": "token", "token_file": str(token_file(tmp_path, bao.root_token))},
    }
    opts.update(extra)
    return opts


def aws_options(moto_url: str, **extra: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"region": "us-east-1", "endpoint_url": moto_url,
                            "prefix": f"rltest-{uuid.uuid4().hex[:10]}/", "max_attempts": 2}
    opts.update(extra)
    return opts


def purge_vault_prefix(store: Any) -> None:
    """Delete everything a live-Vault test wrote under its prefix (metadata and all versions)."""

    def walk(folder: str) -> list[str]:
        out = []
        for key in store._list_dir(folder):
            if key.endswith("/"):
                out.extend(walk(f"{folder}/{key.rstrip('/')}"))
            else:
                out.append(f"{folder}/{key}")
        return out

    for kv_path in walk(store.prefix):
        store.session.call("purging", lambda c, p=kv_path: c.secrets.kv.v2.delete_metadata_and_all_versions(
            path=p, mount_point=store.mount))


def purge_aws_prefix(store: Any) -> None:
    """Delete (without recovery window) every secret a real-AWS test created under its prefix."""
    client = store.service.client()
    for page in client.get_paginator("list_secrets").paginate(Filters=[{"Key": "name", "Values": [store.prefix]}]):
        for doc in page.get("SecretList") or []:
            if doc["Name"].startswith(store.prefix):
                client.delete_secret(SecretId=doc["ARN"], ForceDeleteWithoutRecovery=True)


# -- one aws-sts secret, shared by the AWS put-atomicity and envelope tests ------------------------
#: Its path, the role its leases assume, and its long-lived base credentials (which must never be leased).
P = SecretPath.parse("dev/connections/aws_etl")
ROLE_ARN = "arn:aws:iam::123456789012:role/etl-runner"
BASE_SECRET = "Base-Secret-Key-that-must-not-leak-0123456789"  # runlease: allow high-entropy-secret (test fixture)
BASE = {"conn_type": "aws", "login": "AKIAIOSFODNN7EXAMPLE", "password": BASE_SECRET}
STS = {"issuer": "aws-sts", "role_arn": ROLE_ARN}
