"""A real ``runlease serve`` on 127.0.0.1 with a test OIDC issuer, a stocked home and a workload policy.

Every value is random per test, so finding one in a response, an error, a
log or the audit trail can only be a leak.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runlease.connection import parse_connection
from runlease.models import RunIdentity
from runlease.runtime import Runtime, init_home, open_runtime
from runlease.settings import Settings

from support.oidc_issuer import TestIssuer
from support.runlease_server import ServerProcess, start_server, stop_server

ADMIN = RunIdentity(orchestrator="test", pipeline="setup", task_id="put")

POLICY = """
[[grant]]
description  = "pipeline-a's service account leases the warehouse and the tokens"
workloads    = ["system:serviceaccount:ml:pipeline-a"]
environments = ["dev"]
paths        = ["connections/warehouse", "connections/model_registry", "connections/analytics", "tokens/*"]
capabilities = ["lease", "read"]

[[grant]]
description  = "finance workloads lease the ledger database"
workloads    = ["system:serviceaccount:finance:*"]
environments = ["dev"]
paths        = ["connections/finance"]
capabilities = ["lease"]

[[grant]]
description  = "claimed principals: must never match a workload through the server"
principals   = ["kfp:finance-pipeline"]
environments = ["dev"]
paths        = ["connections/finance"]
capabilities = ["lease"]

[[grant]]
description  = "operators (admin tokens, local CLI) manage everything"
principals   = ["cli", "test"]
environments = ["*"]
paths        = ["*"]
capabilities = ["admin"]
"""


@dataclass
class ServedHome:
    home: Path
    master_key: str
    values: dict[str, str]
    issuer: TestIssuer
    server: ServerProcess
    tokens_dir: Path
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def leaked(self) -> list[str]:
        return [*self.values.values(), self.master_key]

    def settings(self) -> Settings:
        return Settings(home=self.home, master_key=self.master_key)

    def local(self) -> Runtime:
        """The server's own home, opened directly (what an operator on the server's host sees)."""
        return open_runtime(self.settings())

    def token_file(self, token: str, name: str | None = None) -> Path:
        path = self.tokens_dir / (name or f"token-{secrets.token_hex(4)}")
        path.write_text(token)
        return path

    def client_settings(self, token: str) -> Settings:
        """What a pod has: the server URL and a token file. No home, no key."""
        return Settings(home=self.tokens_dir / "no-home", server=self.url, token_file=self.token_file(token))

    def assert_no_leak(self, *texts: str, where: str = "output") -> None:
        for value in self.leaked:
            for text in texts:
                assert value not in text, f"a stored secret leaked into {where}"


def stock_home(home: Path, master_key: str, **settings: object) -> dict[str, str]:
    values = {
        "warehouse": f"WarehousePw-{secrets.token_hex(10)}",
        "registry": f"RegistryPw-{secrets.token_hex(10)}",
        "tracker": f"tracker-{secrets.token_hex(12)}",
        "finance": f"FinancePw-{secrets.token_hex(10)}",
    }
    rt, _ = init_home(Settings(home=home, master_key=master_key, **settings))
    try:
        rt.broker.put("dev/connections/warehouse", parse_connection(
            f"postgres://etl:{values['warehouse']}@warehouse.internal:5432/analytics"), ADMIN)
        rt.broker.put("dev/connections/model_registry", parse_connection(
            f"https://publisher:{values['registry']}@registry.internal:443/models"), ADMIN)
        rt.broker.put("dev/tokens/experiment_tracker", values["tracker"], ADMIN, kind="tokens")
        rt.broker.put("dev/connections/finance", parse_connection(
            f"postgres://fin:{values['finance']}@finance.internal:5432/ledger"), ADMIN)
    finally:
        rt.close()
    (home / "policy.toml").write_text(POLICY)
    return values


@pytest.fixture()
def served_factory(tmp_path: Path) -> Iterator[Callable[..., ServedHome]]:
    """Start servers on a stocked home (extra env and args per call); all stopped at teardown."""
    started: list[ServerProcess] = []
    master_key = base64.b64encode(os.urandom(32)).decode()
    home = tmp_path / "server-home"
    values = stock_home(home, master_key)
    issuer = TestIssuer.create(tmp_path)
    tokens_dir = tmp_path / "tokens"
    tokens_dir.mkdir()

    def _start(*args: str, env: dict[str, str] | None = None, log_name: str = "server.log",
               ca_file: Path | None = None) -> ServedHome:
        server = start_server(
            home, {"RUNLEASE_MASTER_KEY": master_key, **(env or {})}, tmp_path / log_name,
            "--oidc-issuer", issuer.issuer, "--oidc-jwks", str(issuer.jwks_file), *args, ca_file=ca_file,
        )
        started.append(server)
        return ServedHome(home, master_key, values, issuer, server, tokens_dir)

    try:
        yield _start
    finally:
        for server in started:
            stop_server(server)


@pytest.fixture()
def served(served_factory: Callable[..., ServedHome]) -> ServedHome:
    return served_factory()
