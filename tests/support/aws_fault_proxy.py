"""A small HTTP proxy on 127.0.0.1 in front of moto's server: counts AWS calls and refuses chosen ones.

Why: moto cannot be told to deny one action (it does not enforce IAM unless
asked, and then for everything), and its recorder does not say which JSON
action a request was. AWS's JSON protocol names the action in the
``X-Amz-Target`` header (``secretsmanager.TagResource``), so this proxy can
answer a chosen action exactly as AWS does for a missing IAM permission
(HTTP 400, ``{"__type": "AccessDeniedException"}``) and forward the rest
unchanged -- the client under test still speaks real HTTP to a real server.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding"}


class FaultProxy:
    """Forwards to ``upstream``; ``deny`` holds action names (``TagResource``) answered with AccessDenied."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.deny: set[str] = set()
        #: action -> (HTTP status, AWS error code) answered instead of forwarding (e.g. throttling).
        self.fail: dict[str, tuple[int, str]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                return

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                action = (self.headers.get("X-Amz-Target") or "").rpartition(".")[2] or self._query_action(body)
                with proxy._lock:
                    proxy.calls.append(action)
                    answer = (400, "AccessDeniedException") if action in proxy.deny else proxy.fail.get(action)
                if answer is not None:
                    if not self.headers.get("X-Amz-Target"):  # the query protocol answers in XML
                        payload = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{answer[1]}</Code>"
                                   f"<Message>refused by the test proxy</Message></Error></ErrorResponse>").encode()
                        self._answer(answer[0], {"Content-Type": "text/xml"}, payload)
                        return
                    payload = json.dumps({"__type": answer[1], "message": f"refused by the test proxy: {action}"}).encode()
                    self._answer(answer[0], {"Content-Type": "application/x-amz-json-1.1"}, payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                # As an HTTP proxy (botocore ``proxies``) the request line holds the absolute URL.
                path = "/" + self.path.split("/", 3)[3] if self.path.startswith("http") else self.path
                req = urllib.request.Request(proxy.upstream + path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        self._answer(resp.status, dict(resp.headers.items()), resp.read())
                except urllib.error.HTTPError as err:
                    self._answer(err.code, dict(err.headers.items()), err.read())

            @staticmethod
            def _query_action(body: bytes) -> str:  # the query protocol (STS, IAM): Action=... in the form
                for part in body.decode(errors="replace").split("&"):
                    if part.startswith("Action="):
                        return part[len("Action="):]
                return ""

            def _answer(self, status: int, headers: dict[str, str], payload: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in _HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def taken(self) -> list[str]:
        """The actions seen since the last call, in order (and forget them)."""
        with self._lock:
            out, self.calls = self.calls, []
        return out


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
