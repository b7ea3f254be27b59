"""Hand every leased secret to Airflow's masker (and make sure runlease's redactor guards logging).

Airflow's masker only masks the exact strings it is given, plus whatever the
optional ``[logging] secret_mask_adapter`` derives
(``airflow/_shared/secrets_masker/secrets_masker.py``: ``_adaptations``). But a
password shows up in other forms: percent-encoded inside
``Connection.get_uri()`` (which quotes it with ``quote(password, safe="")``,
``airflow/sdk/definitions/connection.py``), form-encoded, or JSON-escaped in a
logged payload. So each secret is registered together with those forms.

``mask_secret`` from the Task SDK (``airflow/sdk/log.py``) registers the value in
this process *and*, inside a task, sends it to the supervisor, which writes the
task log file -- so both processes mask it. Values are passed without a
``name``: with a name, Airflow masks only when the name looks sensitive
(``should_hide_value_for_key``), and a leased variable is secret whatever its
key is called.

The broker has already registered the values with runlease's process-wide
redactor; :func:`protect` also attaches that redactor's logging filter to the
root handlers once, so stdlib logging in this process is covered as well.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote, quote_plus

from runlease.connection import sensitive_strings
from runlease.models import SecretValue
from runlease.redact import default_redactor, install_redacting_filter

_mask: Callable[..., None] | None = None
_filter_installed = False
_filter_lock = threading.Lock()


def _airflow_mask_secret() -> Callable[..., None]:
    global _mask
    if _mask is None:
        try:
            from airflow.sdk.log import mask_secret
        except ImportError:  # pragma: no cover - only without the Task SDK
            from airflow.providers.common.compat.sdk import mask_secret
        _mask = mask_secret
    return _mask


def forms(value: str) -> list[str]:
    """The value and the encoded forms in which it appears in URIs, query strings and JSON."""
    out = [value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]]
    return list(dict.fromkeys(out))


def connection_extra_text(conn: dict[str, Any]) -> str | None:
    """The ``extra`` string exactly as the backend hands it to Airflow's Connection."""
    extra = conn.get("extra")
    return json.dumps(extra) if extra else None


def secret_parts(value: SecretValue) -> list[str]:
    """What must be masked: a whole string value; a connection's password, extra and sensitive extras."""
    if isinstance(value, str):
        return [value]
    parts = list(sensitive_strings(value))
    extra = connection_extra_text(value)
    if extra:
        # Airflow masks conn.extra as one string (context.py _mask_connection_secrets); so do we.
        parts.append(extra)
    return parts


def protect(value: SecretValue) -> None:
    """Register ``value`` with Airflow's masker (all forms) and guard stdlib logging with runlease's."""
    mask_secret = _airflow_mask_secret()
    strings: Iterable[str] = (f for part in secret_parts(value) if part for f in forms(part))
    known = _locally_masked()
    for text in dict.fromkeys(strings):
        if known is None or re.escape(text) not in known:
            mask_secret(text)
    _install_filter_once()


def _locally_masked() -> set[str] | None:
    """The patterns this process's Airflow masker already holds, when skipping them is safe; else None.

    Outside a supervised task (DAG processor, CLI, scheduler plugins), every
    lookup reads and protects the same values again, and registering an
    already-registered string is most of a read's cost. ``mask_secret`` only
    adds to this process's masker there, so a string whose pattern the masker
    holds *now* needs nothing more -- checked on every call, so a
    ``reset_masker()`` (which clears the patterns) makes everything register
    again. Inside a task ``mask_secret`` also tells the supervisor, which
    this process cannot see: nothing is skipped there. Any surprise in
    Airflow's internals (other attribute names) also means: skip nothing.
    """
    # Looked up, never imported here: importing the task runner costs about a second, and
    # where it was never imported there is no supervisor to tell.
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    if task_runner is not None and getattr(task_runner, "SUPERVISOR_COMMS", None) is not None:
        return None
    try:
        from airflow.sdk._shared.secrets_masker.secrets_masker import _secrets_masker
    except ImportError:
        return None
    patterns = getattr(_secrets_masker(), "patterns", None)
    return patterns if isinstance(patterns, set) else None


def _install_filter_once() -> None:
    global _filter_installed
    if _filter_installed:
        return
    with _filter_lock:
        if not _filter_installed:
            install_redacting_filter(default_redactor())
            _filter_installed = True
