"""A tiny in-process Vault HTTP server on 127.0.0.1 speaking Vault's documented wire format.

There is no Vault binary on these machines, so the ``vault-database`` issuer
is tested against the three endpoints it uses, implemented from Vault's API
documentation (status codes and JSON shapes), with the state a real Vault
keeps: which leases exist, their expiry, whether they were revoked.

* ``GET /v1/<mount>/creds/<role>`` -> 200 ``{"request_id", "lease_id",
  "renewable", "lease_duration", "data": {"username", "password"}, ...}``
  https://developer.hashicorp.com/vault/api-docs/secret/databases#generate-credentials
* ``PUT /v1/sys/leases/revoke`` ``{"lease_id"}`` -> 204, also for a lease it
  does not (or no longer) hold
  https://developer.hashicorp.com/vault/api-docs/system/leases#revoke-lease
* ``PUT /v1/sys/leases/renew`` ``{"lease_id", "increment"}`` -> 200
  ``{"lease_id", "renewable", "lease_duration"}``; the new TTL is the
  increment, capped by the role's max TTL counted from issue; 400 with
  ``{"errors": [...]}`` for an unknown, revoked or expired lease
  https://developer.hashicorp.com/vault/api-docs/system/leases#renew-lease
* a missing or wrong ``X-Vault-Token`` -> 403 ``{"errors": ["permission denied"]}``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class FakeLease:
    lease_id: str
    role: str
    username: str
    password: str
    issued: float
    expires: float
    revoked: bool = False


@dataclass
class VaultRole:
    default_ttl: int = 3600
    max_ttl: int = 86400


@dataclass
class FakeVault:
    token: str
    roles: dict[tuple[str, str], VaultRole] = field(default_factory=dict)
    leases: dict[str, FakeLease] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def add_role(self, mount: str, role: str, default_ttl: int = 3600, max_ttl: int = 86400) -> None:
        self.roles[(mount, role)] = VaultRole(default_ttl, max_ttl)


class _Handler(BaseHTTPRequestHandler):
    vault: FakeVault

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def _send(self, status: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        with self.vault.lock:
            self.vault.requests.append({"method": self.command, "path": self.path,
                                        "has_token": bool(self.headers.get("X-Vault-Token"))})
        if self.headers.get("X-Vault-Token") != self.vault.token:
            self._send(403, {"errors": ["permission denied"]})
            return False
        return True

    def _json_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if not self._authorized():
            return
        parts = self.path.split("?")[0].strip("/").split("/")
        # v1/<mount...>/creds/<role>
        if len(parts) >= 4 and parts[0] == "v1" and parts[-2] == "creds":
            mount, role = "/".join(parts[1:-2]), parts[-1]
            spec = self.vault.roles.get((mount, role))
            if spec is None:
                self._send(400, {"errors": [f"unknown role: {role}"]})
                return
            now = time.time()
            lease = FakeLease(
                lease_id=f"{mount}/creds/{role}/{uuid.uuid4().hex[:24]}", role=role,
                username=f"v-token-{role[:8]}-{secrets.token_hex(6)}", password=secrets.token_urlsafe(20),
                issued=now, expires=now + spec.default_ttl,
            )
            with self.vault.lock:
                self.vault.leases[lease.lease_id] = lease
            self._send(200, {
                "request_id": str(uuid.uuid4()), "lease_id": lease.lease_id, "renewable": True,
                "lease_duration": spec.default_ttl,
                "data": {"username": lease.username, "password": lease.password},
                "wrap_info": None, "warnings": None, "auth": None,
            })
            return
        self._send(404, {"errors": []})

    def do_PUT(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        body = self._json_body()
        lease_id = str(body.get("lease_id") or "")
        with self.vault.lock:
            lease = self.vault.leases.get(lease_id)
        if path == "/v1/sys/leases/revoke":
            if lease is not None:
                lease.revoked = True
            self._send(204)
            return
        if path == "/v1/sys/leases/renew":
            now = time.time()
            if lease is None or lease.revoked or lease.expires <= now:
                self._send(400, {"errors": ["lease not found or lease is not renewable"]})
                return
            mount = lease_id.split("/creds/")[0]
            spec = self.vault.roles[(mount, lease.role)]
            increment = int(body.get("increment") or spec.default_ttl)
            lease.expires = min(now + increment, lease.issued + spec.max_ttl)
            self._send(200, {"lease_id": lease_id, "renewable": True,
                             "lease_duration": int(lease.expires - now)})
            return
        self._send(404, {"errors": []})

    # Vault's clients also use POST for these endpoints; treat it the same.
    do_POST = do_PUT


@pytest.fixture
def fake_vault() -> Iterator[FakeVault]:
    """A fresh fake Vault per test (state must not leak between tests)."""
    vault = FakeVault(token="hvs." + secrets.token_urlsafe(24))
    handler = type("Handler", (_Handler,), {"vault": vault})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    vault.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-vault", daemon=True)
    thread.start()
    try:
        yield vault
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
