"""Fixtures for the store tests: a moto server, OpenBao (and a live Vault), and one store per backend.

* AWS: one moto ``ThreadedMotoServer`` on 127.0.0.1 and a free port for the
  whole session, reached by boto3 over HTTP (``endpoint_url``); each test gets
  its own secret-name prefix.
* Vault: the session's real OpenBao server (:mod:`support.openbao`), each
  test under its own prefix. When ``VAULT_ADDR`` and ``VAULT_TOKEN`` are set,
  the same contract tests also run against that Vault (``vault-live``; see
  docs/stores.md), each test under its own prefix, purged afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from store_support import aws_options, free_port, purge_aws_prefix, purge_vault_prefix, vault_options
from runlease.keys.crypto import Keyring, new_key
from runlease.clients.db import Database
from runlease.store.local import LocalStore

if TYPE_CHECKING:
    from support.aws_fault_proxy import FaultProxy

    from runlease.runtime import Runtime

BACKENDS = ["local", "aws", "vault", "vault-live", "aws-live"]
LIVE_VAULT = bool(os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN"))
#: Opt-in: run the contract against real AWS Secrets Manager with the ambient credentials.
LIVE_AWS = os.environ.get("RUNLEASE_TEST_AWS") == "1"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server for the session, with fake credentials so nothing reaches real AWS."""
    from moto.server import ThreadedMotoServer

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_KMS"):
        mp.delenv(key, raising=False)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        mp.undo()


class StoreFactory:
    """Builds stores of one backend that share state (a second instance sees the first's writes)."""

    def __init__(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self.request = request
        self._made: list[Any] = []
        self._options: dict[str, Any] | None = None
        self._db: Database | None = None
        self._keyring: Keyring | None = None

    def make(self) -> Any:
        if self.backend == "local":
            if self._db is None:
                self._keyring = Keyring([new_key()])
                self._db = Database(self.tmp_path / "store.db", create=True)
                store = LocalStore.initialize(self._db, self._keyring)
            else:
                assert self._keyring is not None
                store = LocalStore(Database(self.tmp_path / "store.db"), self._keyring)
        elif self.backend == "aws":
            from runlease.store.aws import AwsSecretsStore

            if self._options is None:
                self._options = aws_options(self.request.getfixturevalue("moto_url"))
            store = AwsSecretsStore.from_options(self._options)
        elif self.backend == "aws-live":
            from runlease.store.aws import AwsSecretsStore

            if self._options is None:
                self._options = {"prefix": f"runlease-test/{uuid.uuid4().hex[:10]}/",
                                 "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")}
            store = AwsSecretsStore.from_options(self._options)
        elif self.backend == "vault":
            from runlease.store.vault import VaultStore

            if self._options is None:
                self._options = vault_options(self.request.getfixturevalue("openbao"), self.tmp_path)
            store = VaultStore.from_options(self._options)
        else:
            from runlease.store.vault import VaultStore

            if self._options is None:
                self._options = {"address": os.environ["VAULT_ADDR"],
                                 "mount": os.environ.get("RUNLEASE_TEST_VAULT_MOUNT", "secret"),
                                 "prefix": f"runlease-test/{uuid.uuid4().hex[:10]}", "timeout": 10}
            store = VaultStore.from_options(self._options)
        self._made.append(store)
        return store

    def close(self) -> None:
        if self.backend == "vault-live" and self._made:
            purge_vault_prefix(self._made[0])
        if self.backend == "aws-live" and self._made:
            purge_aws_prefix(self._made[0])
        for store in self._made:
            if isinstance(store, LocalStore):
                store.db.close()


@pytest.fixture(params=BACKENDS)
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if request.param == "vault-live" and not LIVE_VAULT:
        pytest.skip("live Vault: set VAULT_ADDR and VAULT_TOKEN (e.g. `vault server -dev`) to run against it")
    if request.param == "aws-live" and not LIVE_AWS:
        pytest.skip("real AWS: set RUNLEASE_TEST_AWS=1, AWS_REGION and credentials to run against it")
    factory = StoreFactory(request.param, tmp_path, request)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture()
def store(stores: StoreFactory) -> Any:
    return stores.make()


@pytest.fixture()
def proxy(moto_url: str) -> Iterator["FaultProxy"]:
    """moto's server behind the request-counting, fault-injecting proxy (support.aws_fault_proxy)."""
    from support.aws_fault_proxy import fault_proxy

    with fault_proxy(moto_url) as p:
        yield p


@pytest.fixture()
def rt(tmp_path: Path, proxy: "FaultProxy") -> Iterator["Runtime"]:
    """A runtime (home, ledger, broker) on the AWS store, talking to moto through ``proxy``."""
    from support.homes import make_runtime

    runtime = make_runtime(tmp_path / "home", store="aws", store_options=aws_options(proxy.url))
    try:
        yield runtime
    finally:
        runtime.close()
