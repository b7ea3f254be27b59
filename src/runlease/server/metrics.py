"""Prometheus metrics of one ``runlease serve`` process (``GET /metrics``, text exposition).

Counters and latency by route template (``/v1/leases/{lease_id}/revoke``,
never a concrete lease id, so label cardinality stays bounded), plus the
broker's own outcomes: leases issued, policy denials, authentication
failures by reason, TTL sweeps. Never a path's value, a token or a subject:
labels are route templates, status codes and fixed reason words.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Fixed words for authentication failures, so a reason text never becomes a label value.
_AUTH_REASONS = ("no bearer token", "algorithm", "expired", "not yet valid", "audience", "issuer", "signature",
                 "key", "admin", "malformed")


def auth_reason_label(reason: str) -> str:
    for word in _AUTH_REASONS:
        if word in reason:
            return word.replace(" ", "_")
    return "other"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("runlease_http_requests_total", "HTTP requests by route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("runlease_http_request_seconds", "HTTP request latency by route template",
                                 ["route"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0))
        self.leases = Counter("runlease_leases_issued_total", "Leases issued through the server",
                              registry=self.registry)
        self.revocations = Counter("runlease_leases_revoked_total", "Leases revoked through the server",
                                   registry=self.registry)
        self.denials = Counter("runlease_policy_denials_total", "Requests denied by policy or ownership",
                               registry=self.registry)
        self.auth_failures = Counter("runlease_auth_failures_total", "Rejected bearer tokens by reason",
                                     ["reason"], registry=self.registry)
        self.swept = Counter("runlease_sweep_expired_total", "Leases expired by the server's TTL sweep",
                             registry=self.registry)
        self.sweep_errors = Counter("runlease_sweep_errors_total", "TTL sweeps that failed", registry=self.registry)
        self.last_sweep = Gauge("runlease_sweep_last_success_timestamp_seconds",
                                "Unix time of the last sweep that finished", registry=self.registry)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(auth_reason_label(reason)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request) that times requests."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def record_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope.get("method", ""), template, str(status["code"])).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - started)


#: Largest request body accepted: lease requests are a few hundred bytes; a presented key is at most 16 KiB.
MAX_BODY_BYTES = 64 * 1024


class BodyLimitMiddleware:
    """Refuse request bodies over :data:`MAX_BODY_BYTES` (413) before they are buffered whole."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(send)
                return
        seen = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Any) -> None:
    body = b'{"error":{"type":"InvalidRequest","message":"request body too large","exit_code":2}}'
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
