"""Let the Task SDK's masker guard the stdlib log handlers that Airflow *core* configured.

Airflow 3.3 ships two copies of the secrets masker: ``airflow._shared.secrets_masker``
(core) and ``airflow.sdk._shared.secrets_masker`` (Task SDK); they are separate
modules with separate pattern sets. Core's logging config attaches only the
core one to its handlers (``airflow/config_templates/airflow_local_settings.py``,
filter ``mask_secrets_core``), while a task's ``mask_secret`` calls reach the
supervisor as ``MaskSecret`` messages and are registered with the *SDK* masker
(``airflow/sdk/execution_time/request_handlers.py`` ``handle_mask_secret``).

The LocalExecutor supervises tasks with ``subprocess_logs_to_stdout=True``
(``airflow/executors/local_executor.py``): every line a task prints is also
logged through the supervisor's process logger, i.e. through core's handlers
-- which do not know the SDK masker's patterns. The task log file is masked;
the scheduler's (or ``dag.test()``'s) console is not. Measured here: a task
printing a leased password put it verbatim on the ``dag.test(use_executor=True)``
process's stdout.

Those lines take two routes, and the bridge covers both with the SDK masker:

- structlog-native events (the supervisor's ``log.log(level, line)``) are rendered
  by the processor chain core's ``configure_logging``
  (``airflow/_shared/logging/structlog.py``) installed, which has no masking
  step at all. The bridge inserts the Task SDK's own masking processor
  (``airflow.sdk.log.mask_logs``, the one the SDK's logging config uses) before
  the final renderer. It mutates the configured processor *list in place*
  because loggers bound earlier (``cache_logger_on_first_use``) hold a
  reference to that list, not a copy.
- stdlib records reach core's handlers; a handler filter runs
  ``airflow.sdk.log.redact`` over each record's message and arguments.

It is (re)applied whenever a RunleaseBackend is built -- the supervisor builds
its backends before it forks the task (``supervise`` ->
``ensure_secrets_backend_loaded``) -- and is idempotent.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_lock = threading.Lock()


class SdkMaskerBridge(logging.Filter):
    """Redact a record with the Task SDK's masker. Never raises: a filter must not break logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            from airflow.sdk.log import redact
        except ImportError:  # pragma: no cover - no Task SDK, nothing to bridge
            return True
        try:
            record.msg = redact(record.msg)
            if record.args:
                record.args = redact(record.args)  # type: ignore[assignment]
        except Exception:
            pass
        return True


def _all_handlers() -> list[logging.Handler]:
    handlers: list[logging.Handler] = list(logging.getLogger().handlers)
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            handlers.extend(logger.handlers)
    return list(dict.fromkeys(handlers))


def _install_structlog_masking() -> bool:
    """Insert the SDK's masking processor into structlog's configured chain; True if inserted."""
    try:
        import structlog
        from airflow.sdk.log import mask_logs
    except ImportError:  # pragma: no cover - no Task SDK
        return False
    processors: Any = structlog.get_config()["processors"]
    if not isinstance(processors, list) or not processors or mask_logs in processors:
        return False
    processors.insert(len(processors) - 1, mask_logs)
    return True


def install_sdk_masker_bridge() -> int:
    """Apply the bridge to structlog's chain and every current handler; returns how many places changed."""
    with _lock:
        count = int(_install_structlog_masking())
        for handler in _all_handlers():
            if not any(isinstance(f, SdkMaskerBridge) for f in handler.filters):
                handler.addFilter(SdkMaskerBridge())
                count += 1
        return count
