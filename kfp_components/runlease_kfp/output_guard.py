"""Mask leased values in everything a component prints or logs.

A KFP component's stdout and stderr *are* its log: the KFP launcher (and
kfp.local's ``SubprocessTaskHandler``, which pipes the child's stdout and
stderr into its own stdout) keeps them for the UI. So once a value is leased,
this module makes sure the process-wide redactor sees:

* every record of every ``logging`` handler that exists (KFP's executor
  configures the root logger with ``logging.basicConfig(stream=sys.stdout)``
  in ``kfp/dsl/executor_main.py`` *before* user code runs, so the handler is
  there and keeps a reference to the original ``sys.stdout``; a filter on
  it is the only way to reach those records), via the core's
  :func:`runlease.redact.install_redacting_filter`;
* everything written to ``sys.stdout`` / ``sys.stderr`` (``print``, tracebacks
  printed by ``sys.excepthook`` when the component dies, handlers created
  later), by replacing both with a :class:`RedactingTextStream`.

The guard stays installed for the rest of the process on purpose: a value
can still show up after its lease is revoked (the traceback of the exception
that ended the ``with`` block is printed only when the process dies).

Not covered (documented in docs/kfp.md): bytes written to the file
descriptors directly (``sys.stdout.buffer``, C extensions, child processes
that inherit fd 1/2).
"""

from __future__ import annotations

import atexit
import io
import logging
import sys
import threading
from typing import Any, TextIO

from runlease.redact import Redactor, install_redacting_filter

#: A partial line longer than this is emitted (masked) without waiting for its newline.
MAX_PENDING_CHARS = 1 << 20


class RedactingTextStream(io.TextIOBase):
    """A text stream that masks registered values before passing text on.

    ``print(a, b)`` calls ``write`` once per piece, so a value can arrive in
    several writes; text is held until a newline and masked a whole line
    (or more) at a time. A multi-line value (a PEM key) is held until its
    last line is complete: text is only released up to a newline where
    masking the two halves separately gives the same result as masking them
    together, i.e. where no registered value spans the cut. ``flush()``
    releases everything that is pending (masked), so progress output that
    flushes without a newline still appears.
    """

    def __init__(self, target: TextIO, redactor: Redactor) -> None:
        super().__init__()
        self._target = target
        self._redactor = redactor
        self._pending = ""
        self._lock = threading.RLock()

    @property
    def target(self) -> TextIO:
        return self._target

    # -- io.TextIOBase --------------------------------------------------------

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._target, "errors", None)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._target.isatty()

    def fileno(self) -> int:
        return self._target.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        with self._lock:
            self._pending += text
            if "\n" in text:
                self._release_complete_lines()
            if len(self._pending) > MAX_PENDING_CHARS:
                self._emit(self._redactor.redact(self._pending))
                self._pending = ""
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._emit(self._redactor.redact(self._pending))
                self._pending = ""
            try:
                self._target.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        # Never close the real stdout/stderr under the interpreter's feet.
        self.flush()

    def __getattr__(self, name: str) -> Any:
        # ``buffer``, ``line_buffering``, ``reconfigure``... of the real stream. Private names are
        # never forwarded: before __init__ has run (copy, pickle) that would recurse on _target.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._target, name)

    # -- internals ------------------------------------------------------------

    def _release_complete_lines(self) -> None:
        redact = self._redactor.redact
        pending = self._pending
        cut = pending.rfind("\n") + 1
        while cut > 0:
            head, tail = pending[:cut], pending[cut:]
            masked_head = redact(head)
            if not tail or masked_head + redact(tail) == redact(pending):
                self._emit(masked_head)
                self._pending = tail
                return
            # A registered value spans this newline: try an earlier one.
            cut = pending.rfind("\n", 0, cut - 1) + 1

    def _emit(self, text: str) -> None:
        try:
            self._target.write(text)
        except (OSError, ValueError):
            pass


_install_lock = threading.Lock()


def guard_process_output(redactor: Redactor) -> None:
    """Mask ``redactor``'s values in this process's logging and stdout/stderr (idempotent).

    Called on every lease, so handlers created since the last call are
    covered too.
    """
    with _install_lock:
        for logger in _loggers_with_handlers():
            install_redacting_filter(redactor, logger)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is None or (isinstance(stream, RedactingTextStream) and stream._redactor is redactor):
                continue
            wrapped = RedactingTextStream(stream, redactor)
            setattr(sys, name, wrapped)
            # Release a pending partial line before the interpreter tears the streams down.
            atexit.register(wrapped.flush)


def _loggers_with_handlers() -> list[logging.Logger]:
    loggers = [logging.getLogger()]
    for candidate in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(candidate, logging.Logger) and candidate.handlers:
            loggers.append(candidate)
    return loggers
