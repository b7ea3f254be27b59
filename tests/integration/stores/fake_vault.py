"""A small in-process Vault HTTP server for tests: KV v2, token/AppRole/Kubernetes/JWT auth, namespaces.

There is no Vault binary on the test machines, so the Vault store is tested
against this server over real HTTP on 127.0.0.1 (hvac, requests, sockets and
timeouts all run for real). It implements only the endpoints runlease uses,
with the request and response JSON shapes documented by HashiCorp:

* KV v2 (data/metadata/delete/LIST, ``options.cas``, ``cas_required``,
  ``custom_metadata`` and its size limits, ``max_versions`` pruning, the 404
  body of a deleted version):
  https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2
* token lookup-self / renew-self: https://developer.hashicorp.com/vault/api-docs/auth/token
* AppRole login: https://developer.hashicorp.com/vault/api-docs/auth/approle#login-with-approle
* Kubernetes login: https://developer.hashicorp.com/vault/api-docs/auth/kubernetes#login
* JWT login: https://developer.hashicorp.com/vault/api-docs/auth/jwt#jwt-login
* ``X-Vault-Namespace``: https://developer.hashicorp.com/vault/docs/enterprise/namespaces
* error bodies ``{"errors": [...]}``: https://developer.hashicorp.com/vault/api-docs#http-status-codes

Every request is handled under one lock, so check-and-set is atomic as in
Vault. ``before_request`` lets a test pause requests (to force a race).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CAS_MISMATCH = "check-and-set parameter did not match the current version"
CAS_REQUIRED = "check-and-set parameter required for this call"
DEFAULT_MAX_VERSIONS = 10


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # Vault prints nanoseconds


@dataclass
class Token:
    value: str
    namespace: str = ""
    policies: list[str] = field(default_factory=lambda: ["default"])
    ttl: int = 3600
    renewable: bool = True
    path: str = "auth/token/create"
    revoked: bool = False
    root: bool = False


@dataclass
class KvEntry:
    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    current_version: int = 0
    custom_metadata: dict[str, str] | None = None
    cas_required: bool = False
    max_versions: int = 0
    created_time: str = field(default_factory=_now)
    updated_time: str = field(default_factory=_now)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    namespace: str
    body: Any


class VaultError(Exception):
    def __init__(self, status: int, *errors: str, body: Any = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = list(errors)
        self.body = body


class FakeVault:
    """State of one fake Vault cluster plus the HTTP server that serves it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kv: dict[tuple[str, str], dict[str, KvEntry]] = {}
        self.auth_mounts: dict[tuple[str, str], str] = {}
        self.tokens: dict[str, Token] = {}
        self.approles: dict[tuple[str, str, str], str] = {}
        self.jwt_roles: dict[tuple[str, str, str], set[str]] = {}
        self.denied: list[str] = []
        self.requests: list[Recorded] = []
        self.before_request: Callable[[Recorded], None] | None = None
        self.login_ttl = 3600
        self.login_renewable = True
        self.add_namespace("")
        self.root_token = self.add_token(root=True, ttl=0, renewable=False)
        self._server: ThreadingHTTPServer | None = None

    # -- configuration ------------------------------------------------------------

    def add_namespace(self, namespace: str) -> None:
        self.kv.setdefault((namespace, "secret"), {})
        for kind in ("approle", "kubernetes", "jwt"):
            self.auth_mounts[(namespace, kind)] = kind

    def add_token(self, *, namespace: str = "", ttl: int = 3600, renewable: bool = True, root: bool = False,
                  path: str = "auth/token/create") -> str:
        value = "hvs." + secrets.token_urlsafe(18)
        self.tokens[value] = Token(value, namespace, ["root"] if root else ["default", "runlease"], ttl, renewable,
                                   path, root=root)
        return value

    def add_approle(self, role_id: str, secret_id: str, *, namespace: str = "", mount: str = "approle") -> None:
        self.approles[(namespace, mount, role_id)] = secret_id

    def add_jwt_role(self, role: str, jwt: str, *, namespace: str = "", mount: str = "jwt") -> None:
        self.jwt_roles.setdefault((namespace, mount, role), set()).add(jwt)

    def revoke(self, token: str) -> None:
        with self.lock:
            self.tokens[token].revoked = True

    def deny(self, path_prefix: str) -> None:
        """Every non-root token gets 403 on paths starting with this (a policy without that grant)."""
        self.denied.append(path_prefix)

    def logins(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/login")]

    def entry(self, path: str, *, mount: str = "secret", namespace: str = "") -> KvEntry | None:
        return self.kv[(namespace, mount)].get(path)

    # -- server -------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeVault":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body writes

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                fake._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        server = self._server
        threading.Thread(target=lambda: server.serve_forever(poll_interval=0.05), name="fake-vault", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        method = handler.command.upper()
        query = parse_qs(parts.query)
        if method == "GET" and query.get("list") == ["true"]:
            method = "LIST"
        rec = Recorded(method, parts.path.removeprefix("/v1/"), query, dict(handler.headers.items()),
                       (handler.headers.get("X-Vault-Namespace") or "").strip("/"), body)
        if self.before_request is not None:
            self.before_request(rec)
        with self.lock:
            self.requests.append(rec)
            try:
                if body is None:
                    raise VaultError(400, "failed to parse JSON input")
                status, payload = 200, self._route(rec, handler.headers.get("X-Vault-Token") or "")
                if payload is None:
                    status = 204
            except VaultError as err:
                status, payload = err.status, (err.body if err.body is not None else {"errors": err.errors})
        data = b"" if status == 204 else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    # -- routing ------------------------------------------------------------------

    def _route(self, rec: Recorded, token_value: str) -> Any:
        path, ns, method = rec.path, rec.namespace, rec.method
        segments = path.split("/")
        if len(segments) == 3 and segments[0] == "auth" and segments[2] == "login" and method in ("POST", "PUT"):
            return self._login(ns, segments[1], rec.body)
        token = self._authorize(token_value, ns, path)
        if path == "auth/token/lookup-self" and method == "GET":
            return {"data": self._token_data(token)}
        if path == "auth/token/renew-self" and method in ("POST", "PUT"):
            if not token.renewable:
                raise VaultError(400, "lease is not renewable")
            return {"auth": {"client_token": token.value, "policies": token.policies, "metadata": {},
                             "lease_duration": token.ttl, "renewable": token.renewable}}
        if len(segments) >= 2 and (ns, segments[0]) in self.kv:
            store = self.kv[(ns, segments[0])]
            op, key = segments[1], "/".join(segments[2:])
            if op == "data" and method == "GET":
                return self._read(store, key, rec.query)
            if op == "data" and method in ("POST", "PUT"):
                return self._write(store, key, rec.body)
            if op == "metadata" and method == "LIST":
                return self._list(store, key)
            if op == "metadata" and method == "GET":
                return self._metadata(store, key)
            if op == "metadata" and method in ("POST", "PUT"):
                return self._write_metadata(store, key, rec.body)
            if op == "metadata" and method == "DELETE":
                store.pop(key, None)
                return None
            if op == "delete" and method in ("POST", "PUT"):
                return self._delete_versions(store, key, rec.body)
        raise VaultError(404, f"no handler for route {path!r}")

    def _authorize(self, value: str, ns: str, path: str) -> Token:
        token = self.tokens.get(value)
        if token is None or token.revoked:
            raise VaultError(403, "permission denied")
        if not (token.namespace == "" or ns == token.namespace or ns.startswith(token.namespace + "/")):
            raise VaultError(403, "permission denied")
        if not token.root and any(path.startswith(p) for p in self.denied):
            raise VaultError(403, "permission denied")
        return token

    def _token_data(self, token: Token) -> dict[str, Any]:
        return {
            "accessor": uuid.uuid4().hex[:24], "creation_time": 1523979354, "creation_ttl": token.ttl,
            "display_name": "token", "entity_id": "", "expire_time": None, "explicit_max_ttl": 0,
            "id": token.value, "identity_policies": [], "issue_time": _now(), "meta": None, "num_uses": 0,
            "orphan": True, "path": token.path, "policies": token.policies, "renewable": token.renewable,
            "ttl": token.ttl,
        }

    def _login(self, ns: str, mount: str, body: dict[str, Any]) -> dict[str, Any]:
        kind = self.auth_mounts.get((ns, mount))
        if kind is None:
            raise VaultError(404, f"no handler for route 'auth/{mount}/login'")
        if kind == "approle":
            expected = self.approles.get((ns, mount, str(body.get("role_id"))))
            if expected is None or expected != body.get("secret_id"):
                raise VaultError(400, "invalid role or secret ID")
            metadata: dict[str, Any] = {"role_name": "runlease"}
        else:
            accepted = self.jwt_roles.get((ns, mount, str(body.get("role"))), set())
            if body.get("jwt") not in accepted:
                if kind == "kubernetes":
                    raise VaultError(403, "permission denied")
                raise VaultError(400, "error validating token: invalid signature")
            metadata = {"role": body.get("role")}
        value = self.add_token(namespace=ns, ttl=self.login_ttl, renewable=self.login_renewable,
                               path=f"auth/{mount}/login")
        return {"auth": {"client_token": value, "accessor": uuid.uuid4().hex[:24], "policies": ["default", "runlease"],
                         "token_policies": ["default", "runlease"], "metadata": metadata,
                         "lease_duration": self.login_ttl, "renewable": self.login_renewable,
                         "entity_id": "", "token_type": "service", "orphan": True}}

    # -- KV v2 ------------------------------------------------------------------------

    @staticmethod
    def _version_meta(entry: KvEntry, n: int) -> dict[str, Any]:
        v = entry.versions[n]
        return {"created_time": v["created_time"], "custom_metadata": entry.custom_metadata,
                "deletion_time": v["deletion_time"], "destroyed": v["destroyed"], "version": n}

    def _read(self, store: dict[str, KvEntry], key: str, query: dict[str, list[str]]) -> dict[str, Any]:
        entry = store.get(key)
        if entry is None or not entry.versions:
            raise VaultError(404)
        n = int((query.get("version") or ["0"])[0]) or entry.current_version
        if n not in entry.versions:
            raise VaultError(404)
        v = entry.versions[n]
        if v["deletion_time"] or v["destroyed"]:
            # Vault answers 404 and still returns the version's metadata with null data.
            raise VaultError(404, body={"data": {"data": None, "metadata": self._version_meta(entry, n)}})
        return {"request_id": str(uuid.uuid4()), "lease_id": "", "renewable": False, "lease_duration": 0,
                "data": {"data": v["data"], "metadata": self._version_meta(entry, n)},
                "wrap_info": None, "warnings": None, "auth": None}

    def _write(self, store: dict[str, KvEntry], key: str, body: dict[str, Any]) -> dict[str, Any]:
        data = body.get("data")
        if not isinstance(data, dict):
            raise VaultError(400, "no data provided")
        entry = store.get(key) or KvEntry()
        cas = (body.get("options") or {}).get("cas")
        if cas is None and entry.cas_required:
            raise VaultError(400, CAS_REQUIRED)
        if cas is not None and int(cas) != entry.current_version:
            raise VaultError(400, CAS_MISMATCH)
        n = entry.current_version + 1
        entry.versions[n] = {"data": data, "created_time": _now(), "deletion_time": "", "destroyed": False}
        entry.current_version = n
        entry.updated_time = entry.versions[n]["created_time"]
        limit = entry.max_versions or DEFAULT_MAX_VERSIONS
        while len(entry.versions) > limit:
            del entry.versions[min(entry.versions)]
        store[key] = entry
        return {"data": self._version_meta(entry, n)}

    def _metadata(self, store: dict[str, KvEntry], key: str) -> dict[str, Any]:
        entry = store.get(key)
        if entry is None:
            raise VaultError(404)
        return {"data": {
            "cas_required": entry.cas_required, "created_time": entry.created_time,
            "current_version": entry.current_version, "delete_version_after": "0s",
            "max_versions": entry.max_versions, "oldest_version": min(entry.versions, default=0),
            "updated_time": entry.updated_time, "custom_metadata": entry.custom_metadata,
            "versions": {str(n): {k: v[k] for k in ("created_time", "deletion_time", "destroyed")}
                         for n, v in sorted(entry.versions.items())},
        }}

    def _write_metadata(self, store: dict[str, KvEntry], key: str, body: dict[str, Any]) -> None:
        entry = store.get(key) or KvEntry()
        if "custom_metadata" in body:
            custom = body["custom_metadata"] or {}
            if len(custom) > 64:
                raise VaultError(400, "custom_metadata may not exceed 64 keys")
            for k, v in custom.items():
                if not isinstance(v, str) or len(k) > 128 or len(v) > 512:
                    raise VaultError(400, f"custom_metadata key {k!r} is invalid (key <= 128, string value <= 512)")
            entry.custom_metadata = dict(custom)
        if "cas_required" in body:
            entry.cas_required = bool(body["cas_required"])
        if "max_versions" in body:
            entry.max_versions = int(body["max_versions"])
        entry.updated_time = _now()
        store[key] = entry
        return None

    def _list(self, store: dict[str, KvEntry], key: str) -> dict[str, Any]:
        folder = key.rstrip("/") + "/" if key.strip("/") else ""
        keys = set()
        for path in store:
            if path.startswith(folder):
                rest = path[len(folder):]
                head, sep, _ = rest.partition("/")
                keys.add(head + sep)
        if not keys:
            raise VaultError(404)
        return {"data": {"keys": sorted(keys)}}

    def _delete_versions(self, store: dict[str, KvEntry], key: str, body: dict[str, Any]) -> None:
        entry = store.get(key)
        if entry is not None:
            for n in body.get("versions") or []:
                if int(n) in entry.versions and not entry.versions[int(n)]["deletion_time"]:
                    entry.versions[int(n)]["deletion_time"] = _now()
        return None
