"""The HTTP side of a runlease client: pooled keep-alive connections, the bearer token, retries, errors.

* One ``urllib3.PoolManager`` per client: connections are kept alive and
  reused (a lease is one request on a warm connection).
* The token is read from ``RUNLEASE_TOKEN_FILE`` and re-read whenever the
  file changes (the kubelet rotates projected tokens in place), so a
  long-running component never sends an expired token it could have renewed.
* Retries with exponential backoff only where repeating cannot duplicate
  work: a 503 (the server said it did not do it; ``Retry-After`` honoured)
  and a connection that could not be opened (nothing was sent). A read
  timeout after sending a lease is *not* retried: the server may have issued
  it, and the TTL cleans up if so.
* Errors map to the core's exit codes: unreachable -> :class:`BackendError`
  (9), 401 -> :class:`NotAuthenticatedError` (6), 403 ->
  :class:`AccessDeniedError` (6), 404 -> not found (4), 400 -> bad input (2).
  Messages name the server and the route, never the token.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from runlease.errors import (
    AccessDeniedError,
    BackendError,
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidValueError,
    LeaseNotFoundError,
    RunleaseError,
    SecretNotFoundError,
)

RETRIES = 3
BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0


class NotAuthenticatedError(RunleaseError, PermissionError):
    """The server refused the bearer token (HTTP 401): missing, expired, forged, wrong audience."""

    exit_code = 6


class RemoteError(RunleaseError):
    """Any other failure the server reported; carries the server's exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_BY_NAME: dict[str, type[RunleaseError]] = {
    cls.__name__: cls for cls in (SecretNotFoundError, LeaseNotFoundError, InvalidValueError, ConflictError,
                                  IntegrityError, ConfigError)
}


class TokenFile:
    """A bearer token in a file, re-read when the file's identity, size or mtime changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token = ""
        self._lock = threading.Lock()

    def read(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise NotAuthenticatedError(
                f"cannot read the token file {self.path} ({err.strerror}); set RUNLEASE_TOKEN_FILE to the "
                "projected service-account token or an admin token file") from None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                self._token = self.path.read_text().strip()
                self._stamp = stamp
            if not self._token:
                raise NotAuthenticatedError(f"the token file {self.path} is empty")
            return self._token


class ServerClient:
    """JSON over HTTP(S) to one ``runlease serve``; thread-safe (the pool is)."""

    def __init__(self, url: str, token_file: Path, *, ca_file: Path | None = None, timeout: float = 30.0,
                 retries: int = RETRIES, pool_size: int = 8) -> None:
        import urllib3

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"RUNLEASE_SERVER {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.token = TokenFile(token_file)
        self.retries = retries
        self._urllib3 = urllib3
        self.pool = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=min(5.0, timeout), read=timeout),
            ca_certs=str(ca_file) if ca_file else None,
        )

    def close(self) -> None:
        self.pool.clear()

    def request(self, method: str, route: str, body: dict[str, Any] | None = None,
                query: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request (retrying as the module says) and return the decoded JSON body."""
        url = self.url + route
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        payload = json.dumps(body).encode() if body is not None else None
        attempt = 0
        while True:
            headers = {"Authorization": f"Bearer {self.token.read()}", "Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            try:
                response = self.pool.request(method, url, body=payload, headers=headers)
            except self._urllib3.exceptions.NewConnectionError as err:
                if attempt < self.retries:
                    attempt += 1
                    time.sleep(min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (attempt - 1)))
                    continue
                raise BackendError(f"runlease server {self.url} is unreachable ({type(err).__name__})") from None
            except self._urllib3.exceptions.HTTPError as err:
                raise BackendError(f"runlease server {self.url}: {method} {route} failed "
                                   f"({type(err).__name__})") from None
            if response.status == 503 and attempt < self.retries:
                attempt += 1
                time.sleep(min(MAX_BACKOFF_S, _retry_after(response) or BACKOFF_S * 2 ** (attempt - 1)))
                continue
            return self._decode(method, route, response)

    def _decode(self, method: str, route: str, response: Any) -> dict[str, Any]:
        try:
            doc = json.loads(response.data or b"{}")
        except ValueError:
            doc = {}
        if 200 <= response.status < 300:
            return doc
        error = doc.get("error") if isinstance(doc, dict) else None
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message") or f"HTTP {response.status}")
        where = f"runlease server {self.url} ({method} {route})"
        if response.status == 401:
            raise NotAuthenticatedError(f"{where} refused the token: {message}")
        if response.status == 403:
            raise AccessDeniedError(f"{where}: {message}")
        if response.status in (502, 503, 504):
            raise BackendError(f"{where} is unavailable: {message}")
        cls = _BY_NAME.get(str(error.get("type")))
        if cls is not None:
            raise cls(message)
        if response.status == 404:
            raise RemoteError(f"{where}: {message}", 4)
        if response.status == 400:
            raise InvalidValueError(f"{where}: {message}")
        raise RemoteError(f"{where}: {message}", int(error.get("exit_code") or 1))


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("Retry-After"))
    except (TypeError, ValueError):
        return None
