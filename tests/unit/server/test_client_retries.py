"""The client's retry rules, against a stub HTTP server on 127.0.0.1 that answers 503 on demand.

A stub because the fault is the point: the real server answers 503 only when
its own backend is down, which cannot be switched on and off per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runlease.errors import BackendError
from runlease.remote import http as remote_http
from runlease.remote.http import NotAuthenticatedError, ServerClient


@pytest.fixture()
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str], list[int]]]:
    """A server answering the queued statuses in order (then 200); records the Authorization headers."""
    monkeypatch.setattr(remote_http, "BACKOFF_S", 0.01)
    seen: list[str] = []
    statuses: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.headers.get("Authorization", ""))
            status = statuses.pop(0) if statuses else 200
            body = json.dumps({"revoked": True} if status == 200 else
                              {"error": {"type": "BackendError", "message": "ledger down", "exit_code": 9}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, statuses
    finally:
        server.shutdown()
        server.server_close()


def test_503_is_retried_with_backoff_then_succeeds(stub, tmp_path: Path) -> None:
    url, seen, statuses = stub
    token = tmp_path / "token"
    token.write_text("first-token\n")
    statuses.extend([503, 503])
    client = ServerClient(url, token)
    assert client.request("POST", "/v1/leases/x/revoke", {"reason": "r"}) == {"revoked": True}
    assert len(seen) == 3
    # The token file is re-read when it changes (the kubelet rotates projected tokens in place).
    token.write_text("rotated-token-longer\n")
    client.request("POST", "/v1/leases/x/revoke", {"reason": "r"})
    assert seen[-1] == "Bearer rotated-token-longer" and seen[0] == "Bearer first-token"


def test_503_past_the_retries_is_exit_9_and_other_statuses_are_not_retried(stub, tmp_path: Path) -> None:
    url, seen, statuses = stub
    token = tmp_path / "token"
    token.write_text("t")
    statuses.extend([503] * 10)
    with pytest.raises(BackendError) as caught:
        ServerClient(url, token, retries=2).request("POST", "/v1/leases/x/revoke", {})
    assert caught.value.exit_code == 9 and len(seen) == 3 and "ledger down" in str(caught.value)
    statuses.clear()
    statuses.append(401)
    with pytest.raises(NotAuthenticatedError):
        ServerClient(url, token).request("POST", "/v1/leases/x/revoke", {})
    assert len(seen) == 4  # a 401 is answered at once, not retried


def test_a_missing_token_file_is_a_clear_401_class_error(tmp_path: Path) -> None:
    with pytest.raises(NotAuthenticatedError, match="RUNLEASE_TOKEN_FILE"):
        ServerClient("http://127.0.0.1:1", tmp_path / "absent").request("GET", "/v1/leases")
