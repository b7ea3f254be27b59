"""A throwaway PostgreSQL server for the test session (Debian's ``postgresql`` binaries).

Why a real server: the postgres issuer's guarantees (VALID UNTIL refuses a
login, revoke terminates open sessions, a role is dropped) and the shared
ledger's locking are properties of PostgreSQL itself; a mock would only test
our assumptions about it.

The server lives in a temporary directory, listens on 127.0.0.1 and a free
port, keeps its unix socket inside that directory (never /var/run), and is
stopped with ``pg_ctl stop -m immediate`` at the end of the session. As root,
``initdb``/``pg_ctl`` run through ``runuser -u postgres --`` because PostgreSQL
refuses to run as root. ``fsync`` is off (a crash loses nothing we care
about) and ``log_statement=all`` is on, so tests can grep the server log and
prove a password never reached it.

Missing binaries skip the tests with a clear reason, except in CI
(``CI=true``), where they fail: `.ci/run` installs PostgreSQL, so a CI run
without it is broken, not "skipped".

Use the ``postgres_server`` fixture (session scope) and, per test,
``pg_database`` for a fresh database.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SUPERUSER = "postgres"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30


def find_bindir() -> Path | None:
    """Newest ``/usr/lib/postgresql/<version>/bin`` with initdb, else initdb on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running throwaway server; ``dsn()`` builds libpq connection strings for it."""

    bindir: Path
    root: Path
    port: int
    password: str = field(repr=False)
    host: str = "127.0.0.1"
    superuser: str = SUPERUSER

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        """A key=value conninfo over TCP (never the unix socket), with a short connect timeout."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.host, port=str(self.port), dbname=dbname, user=user or self.superuser,
            password=self.password if password is None and user in (None, self.superuser) else password,
            connect_timeout="10",
        )

    def execute(self, *statements: str, dbname: str = "postgres") -> None:
        """Run statements as the superuser in autocommit mode (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)  # type: ignore[arg-type]  # test-owned literal SQL

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{secrets.token_hex(6)}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SUPERUSER, "--", *cmd]
    return cmd


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=timeout, check=False)


def start_server(bindir: Path) -> PostgresServer:
    """initdb + pg_ctl start in a fresh temp dir; retries on a port lost to another process."""
    root = Path(tempfile.mkdtemp(prefix="runlease-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, SUPERUSER, SUPERUSER)
    password = secrets.token_urlsafe(18)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, SUPERUSER, SUPERUSER)
    pwfile.chmod(0o600)
    init = _run(
        [str(bindir / "initdb"), "-D", str(root / "data"), "-U", SUPERUSER, f"--pwfile={pwfile}",
         "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
        timeout=120,
    )
    pwfile.unlink()
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
    last_error = ""
    for _ in range(3):
        port = free_port()
        options = " ".join([
            "-c listen_addresses=127.0.0.1", f"-p {port}", f"-k {root}",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c log_statement=all", "-c max_connections=100", "-c shared_buffers=32MB",
        ])
        start = _run(
            [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"),
             "-w", "-t", str(START_TIMEOUT_S), "-o", options, "start"],
            timeout=START_TIMEOUT_S + 15,
        )
        if start.returncode == 0:
            return PostgresServer(bindir=bindir, root=root, port=port, password=password)
        last_error = start.stderr[-2000:] + (root / "server.log").read_text(errors="replace")[-2000:]
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"pg_ctl start failed three times: {last_error}")


def stop_server(server: PostgresServer) -> None:
    """Immediate shutdown (no checkpoint to wait for), then remove everything it wrote."""
    try:
        _run([str(server.bindir / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate",
              "-w", "-t", str(STOP_TIMEOUT_S), "stop"], timeout=STOP_TIMEOUT_S + 15)
    except subprocess.TimeoutExpired:
        _kill_postmaster(server)
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


def _kill_postmaster(server: PostgresServer) -> None:
    """Last resort if pg_ctl hangs: SIGKILL the postmaster we started (its pid is in postmaster.pid)."""
    try:
        pid = int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    time.sleep(0.2)


def require_bindir() -> Path:
    """The server binaries, or skip (locally) / fail (CI=true) with a reason that says what to install."""
    bindir = find_bindir()
    problem = None
    if bindir is None:
        problem = ("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb "
                   "on PATH); install Debian's `postgresql` package (.ci/run does)")
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed (extra: postgres)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert bindir is not None
    return bindir


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session (skip locally, fail in CI, if not installed)."""
    server = start_server(require_bindir())
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; dropped (with its connections) afterwards."""
    name = postgres_server.create_database()
    yield name
    postgres_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
