"""Turn SIGTERM into an orderly exit so a cancelled KFP run still revokes its leases.

When a run is cancelled (or a pod is evicted), Kubernetes sends the
container SIGTERM and, after the grace period, SIGKILL. Python's default
SIGTERM action kills the process on the spot: no ``finally``, no ``with``
exit, no ``atexit``. While a lease is held, :class:`TerminationGuard`
replaces that with a handler that raises :class:`Terminated` in the main
thread, so the ``with runlease_kfp.lease(...)`` block unwinds and revokes
on its way out, and the process then exits with status 143 (128 + SIGTERM),
as it would have.

Revocation itself must not be cut in half by a second signal, so it runs in
a :meth:`TerminationGuard.critical` section: a signal arriving there is
remembered and raised when the section ends.

Python only lets the main thread set signal handlers; in other threads the
guard does nothing and the TTL (plus the run's exit handler) is the backstop.
A process that ignores SIGTERM (``SIG_IGN``) keeps ignoring it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Union

_Handler = Union[Callable[[int, Union[FrameType, None]], Any], int, signal.Handlers, None]


class Terminated(SystemExit):
    """Raised in the main thread when the component receives SIGTERM while holding a lease.

    A :class:`SystemExit`, so ``except Exception`` in user code does not
    swallow it and the interpreter exits quietly with ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name}"


class TerminationGuard:
    """Install the SIGTERM handler while at least one lease is held; restore the previous one after."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self._lock = threading.Lock()
        self._holders = 0
        self._previous: _Handler = None
        self._installed = False
        self._critical = 0
        self._pending: int | None = None

    # -- lease bookkeeping ----------------------------------------------------

    def acquire(self) -> None:
        """A lease is now held: from here SIGTERM unwinds instead of killing."""
        with self._lock:
            self._holders += 1
            if self._installed or threading.current_thread() is not threading.main_thread():
                return
            previous = signal.getsignal(self.signum)
            if previous == signal.SIG_IGN:
                return  # the process chose to ignore SIGTERM; keep it that way
            self._previous = previous
            signal.signal(self.signum, self._on_signal)
            self._installed = True

    def release(self) -> None:
        """A lease was given back; the last one restores the previous handler."""
        with self._lock:
            self._holders = max(0, self._holders - 1)
            if self._holders or not self._installed:
                return
            if threading.current_thread() is threading.main_thread():
                signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
                self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    # -- signal handling ------------------------------------------------------

    @contextmanager
    def critical(self, raise_pending: bool = True) -> Iterator[None]:
        """Defer the signal while leasing or revoking; raise it (once) when the section ends.

        Only the main thread counts: the handler runs there, and a deferred
        signal must be raised there, never in a worker thread.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self._critical == 0 and self._pending is not None:
            signum, self._pending = self._pending, None
            if raise_pending:
                raise Terminated(signum)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._critical:
            self._pending = signum
            return
        previous = self._previous
        if callable(previous):
            # Give an earlier handler (a framework's graceful shutdown) its turn first;
            # if it raises, that exception unwinds the lease block just the same.
            previous(signum, frame)
        raise Terminated(signum)


#: The process-wide guard used by :func:`runlease_kfp.lease`.
guard = TerminationGuard()
