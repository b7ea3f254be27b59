"""What one ``runlease serve`` process holds: the broker (KEK, store, ledger, issuers), who may call, metrics.

Kept apart from the FastAPI app so the routes, the sweep task and the tests
share one object.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from runlease.broker import Broker
from runlease.errors import RevocationIncompleteError
from runlease.runtime import Runtime
from runlease.server.auth import Authenticator
from runlease.server.metrics import ServerMetrics
from runlease.store.base import SecretStore

_log = logging.getLogger("runlease.server")
T = TypeVar("T")


@dataclass
class ServerState:
    runtime: Runtime
    authenticator: Authenticator
    metrics: ServerMetrics
    oidc_issuer: str | None = None
    version: str = "1"
    sweep_interval_s: float = 60.0
    #: Run broker calls on the event loop instead of a worker thread. True for the embedded
    #: store and ledger: their writes serialize on one lock anyway, so a thread hop buys no
    #: concurrency, only two thread wake-ups per request (milliseconds on a busy machine).
    #: Network backends (PostgreSQL ledger, Vault, AWS) keep the thread pool.
    inline_broker: bool = False
    #: Small per-process memos of the routes (e.g. the last chain verification and when it ran).
    notes: dict[str, Any] = field(default_factory=dict)

    #: Worker threads of the broker calls (unless inline): a dedicated pool, so a lease costs one
    #: ``run_in_executor`` hop rather than anyio's thread-pool machinery (limiter, task-group checks).
    executor: ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a (blocking) broker call the way this server is configured to."""
        if self.inline_broker:
            return fn(*args, **kwargs)
        if self.executor is None:
            return await run_in_threadpool(fn, *args, **kwargs)
        context = contextvars.copy_context()  # correlation ids and the like follow the call
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(context.run, fn, *args, **kwargs))

    @property
    def broker(self) -> Broker:
        return self.runtime.broker

    @property
    def store(self) -> SecretStore:
        return self.runtime.store

    def sweep_once(self) -> int:
        """Expire every active lease past its TTL. Replicas sweeping at once is safe: closing a
        lease is conditional on it still being active, so each lease is closed once."""
        try:
            count = self.broker.sweep_expired()
        except RevocationIncompleteError as err:
            self.metrics.sweep_errors.inc()
            self.metrics.swept.inc(err.closed)
            _log.error("TTL sweep: %s", err)
            return err.closed
        except Exception as err:  # noqa: BLE001 - the next sweep tries again
            self.metrics.sweep_errors.inc()
            _log.error("TTL sweep failed: %s", type(err).__name__)
            return 0
        self.metrics.swept.inc(count)
        self.metrics.last_sweep.set_to_current_time()
        if count:
            _log.info("TTL sweep expired %d lease(s)", count)
        return count
