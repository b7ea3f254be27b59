"""The CLI against a real server: admin tokens (created, used, tampered), exit codes, TLS, refused setups."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from runlease.models import RunIdentity
from runlease.runtime import open_runtime

from support.served_home import ServedHome
from support.tls import self_signed


def cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    full.update(env, COLUMNS="400")  # rich tables fold long cells at 80 columns
    return subprocess.run([sys.executable, "-m", "runlease", *args], env=full, capture_output=True, text=True,
                          timeout=120, input=stdin)


def server_env(served: ServedHome) -> dict[str, str]:
    return {"RUNLEASE_HOME": str(served.home), "RUNLEASE_MASTER_KEY": served.master_key}


def client_env(served: ServedHome, token_file: Path) -> dict[str, str]:
    """What an operator's laptop has: the URL and a token file; no home, no key."""
    return {"RUNLEASE_SERVER": served.url, "RUNLEASE_TOKEN_FILE": str(token_file),
            "RUNLEASE_HOME": str(token_file.parent / "no-home")}


def test_admin_token_drives_the_cli_through_the_server_and_is_stored_only_as_a_mac(served: ServedHome) -> None:
    token_file = served.tokens_dir / "ops.token"
    made = cli("server", "token", "create", "--name", "ops", "--output", str(token_file), env=server_env(served))
    assert made.returncode == 0, made.stderr
    token = token_file.read_text().strip()
    assert token.startswith("rladm_") and oct(token_file.stat().st_mode & 0o777) == "0o600"
    stored = (served.home / "server-tokens.json").read_text()
    assert token not in stored and token.split("_")[-1] not in stored

    env = client_env(served, token_file)
    leased = cli("lease", "dev/connections/warehouse", "--run-id", "ops-run", "--ttl", "60", env=env)
    assert leased.returncode == 0, leased.stderr
    served.assert_no_leak(leased.stdout, leased.stderr, where="the CLI's masked output")
    listed = cli("leases", "--run-id", "ops-run", env=env)
    assert listed.returncode == 0 and "dev/connections/warehouse" in listed.stdout
    lease_id = next(word for word in listed.stdout.split() if word.startswith("rl") and len(word) == 26)
    shown = cli("audit", "show", "--run-id", "ops-run", env=env)
    assert shown.returncode == 0 and "admin:ops" in shown.stdout
    assert cli("audit", "verify", env=env).returncode == 0
    revoked = cli("revoke", lease_id, env=env)
    assert revoked.returncode == 0 and f"revoked {lease_id}" in revoked.stdout
    # A workload's lease can be revoked by the operator, too (admin sees every lease).
    workload = open_runtime(served.client_settings(served.issuer.token()))
    lease = workload.broker.lease("dev/connections/warehouse",
                                  RunIdentity(orchestrator="kfp", pipeline="p", run_id="r-1"), 60)
    assert cli("revoke", "--run-id", "r-1", env=env).stdout.strip() == "revoked 1 lease(s) of run r-1"
    # Commands that need the home say so instead of failing obscurely.
    refused = cli("ls", env=env)
    assert refused.returncode == 2 and "RUNLEASE_SERVER" in refused.stderr
    assert lease.lease_id

    # Tampering: an entry whose MAC was made up by someone without the KEK authenticates nobody.
    doc = json.loads(stored)
    doc["tokens"][0]["mac"] = "0" * 64
    (served.home / "server-tokens.json").write_text(json.dumps(doc))
    denied = cli("leases", env=env)
    assert denied.returncode == 6 and "refused the token" in denied.stderr
    # Revoked tokens stop working at the next request.
    (served.home / "server-tokens.json").write_text(stored)
    assert cli("leases", env=env).returncode == 0
    assert cli("server", "token", "revoke", "ops", env=server_env(served)).returncode == 0
    assert cli("leases", env=env).returncode == 6


def test_cli_exit_codes_for_a_workload_token(served: ServedHome) -> None:
    env = client_env(served, served.token_file(served.issuer.token()))
    denied = cli("lease", "dev/connections/finance", env=env)
    assert denied.returncode == 6 and "not granted" in denied.stderr
    env_bad = client_env(served, served.token_file(served.issuer.alg_none()))
    assert cli("leases", env=env_bad).returncode == 6
    from support.postgres import free_port

    env_down = dict(env, RUNLEASE_SERVER=f"http://127.0.0.1:{free_port()}")
    down = cli("leases", env=env_down)
    assert down.returncode == 9 and "unreachable" in down.stderr


def test_plain_http_off_loopback_and_serving_without_a_policy_are_refused(served: ServedHome, tmp_path) -> None:
    refused = cli("serve", "--host", "0.0.0.0", "--port", "1", env=server_env(served))
    assert refused.returncode == 2 and "--tls-cert" in refused.stderr
    (served.home / "policy.toml").rename(served.home / "policy.off")
    try:
        no_policy = cli("serve", "--port", "1", env=server_env(served))
        assert no_policy.returncode == 2 and "policy file" in no_policy.stderr
    finally:
        (served.home / "policy.off").rename(served.home / "policy.toml")


def test_tls_from_cert_and_key_files(served_factory, tmp_path) -> None:
    import pytest

    from runlease.errors import BackendError
    from runlease.settings import Settings

    cert, key = self_signed(tmp_path)
    served = served_factory("--tls-cert", str(cert), "--tls-key", str(key), ca_file=cert)
    assert served.url.startswith("https://")
    settings = Settings(home=tmp_path / "none", server=served.url, server_ca=cert,
                        token_file=served.token_file(served.issuer.token()))
    who = RunIdentity(orchestrator="kfp", pipeline="p")
    lease = open_runtime(settings).broker.lease("dev/connections/warehouse", who, 60)
    assert lease.value["password"] == served.values["warehouse"]
    # Without the CA the client refuses the server (no silent downgrade to unverified TLS).
    with pytest.raises(BackendError):
        open_runtime(settings.model_copy(update={"server_ca": None})).broker.lease(
            "dev/connections/warehouse", who, 60)
    # Plain HTTP to the TLS port fails too.
    with pytest.raises(BackendError):
        open_runtime(settings.model_copy(update={"server": served.url.replace("https", "http")})).broker.lease(
            "dev/connections/warehouse", who, 60)


def test_without_oidc_flags_only_admin_tokens_are_accepted(served: ServedHome, tmp_path) -> None:
    from support.runlease_server import start_server, stop_server

    token_file = served.tokens_dir / "ops.token"
    assert cli("server", "token", "create", "--name", "ops", "-o", str(token_file),
               env=server_env(served)).returncode == 0
    server = start_server(served.home, {"RUNLEASE_MASTER_KEY": served.master_key}, tmp_path / "admin-only.log")
    try:
        env = client_env(served, token_file)
        env["RUNLEASE_SERVER"] = server.url
        assert cli("leases", env=env).returncode == 0
        env["RUNLEASE_TOKEN_FILE"] = str(served.token_file(served.issuer.token()))
        refused = cli("leases", env=env)
        assert refused.returncode == 6 and "accepts no workload tokens" in refused.stderr
    finally:
        stop_server(server)


def test_audit_verify_through_the_server_catches_a_secret_rolled_back_in_its_home(served: ServedHome) -> None:
    """Issue #12 through runlease serve: all of one secret's rows put back to an earlier genuine copy
    (no key needed) pass every row MAC, but the server's verify compares them with the signed state
    record in its home and says so; the operator's CLI (no home) exits 7."""
    import sqlite3

    from runlease.models import RunIdentity as Who

    token_file = served.tokens_dir / "ops.token"
    assert cli("server", "token", "create", "--name", "ops", "--output", str(token_file),
               env=server_env(served)).returncode == 0
    env = client_env(served, token_file)
    store = served.home / "store.db"
    path = "dev/tokens/experiment_tracker"
    with sqlite3.connect(store) as db:
        saved = {t: db.execute(f"SELECT * FROM {t} WHERE path=?", (path,)).fetchall()
                 for t in ("secrets", "stages", "versions")}
    local = served.local()
    try:
        local.broker.put(path, "tracker-rotated-value-2", Who(orchestrator="cli", pipeline="ops"), kind="tokens")
    finally:
        local.close()
    assert cli("audit", "verify", env=env).returncode == 0
    with sqlite3.connect(store, isolation_level=None) as db:
        for t in ("stages", "versions", "secrets"):
            db.execute(f"DELETE FROM {t} WHERE path=?", (path,))
        for t in ("secrets", "versions", "stages"):
            for row in saved[t]:
                db.execute(f"INSERT INTO {t} VALUES ({','.join('?' * len(row))})", row)
    verified = cli("audit", "verify", env=env)
    assert verified.returncode == 7 and "rollback" in verified.stderr + verified.stdout, verified
    served.assert_no_leak(verified.stdout, verified.stderr, where="audit verify's output")
    assert "tracker-rotated-value-2" not in verified.stdout + verified.stderr
    refused = cli("audit", "verify", "--reanchor", env=env)
    assert refused.returncode == 2 and "home" in refused.stderr
