"""The denial Airflow must not fall through on.

Airflow's lookup loops (``airflow/sdk/execution_time/context.py``
``_get_connection``/``_get_variable``, and ``airflow/models/connection.py`` /
``variable.py`` on the server side) try the next backend after *any* exception
except ``AirflowSecretsBackendAccessDenied``, which they re-raise: "Authoritative
deny -- must NOT fall through to a less-restrictive backend". A policy denial
must be that exception, or a DAG denied a connection by runlease would quietly
get it from the metadata database instead. It is also a runlease
``AccessDeniedError``, so runlease callers can catch it the usual way.
"""

from __future__ import annotations

from runlease.errors import AccessDeniedError, IntegrityError

try:
    from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
except ImportError:  # pragma: no cover - Task SDK < 1.2.2 has no such class
    class AirflowSecretsBackendAccessDenied(PermissionError):  # type: ignore[no-redef]
        """Stand-in with the same name for Task SDKs that predate the real class."""


class RunleaseAccessDenied(AirflowSecretsBackendAccessDenied, AccessDeniedError):
    """runlease policy denied this task the secret; the denial is already audited."""


class RunleaseTampered(AirflowSecretsBackendAccessDenied, IntegrityError):
    """A row runlease holds for this secret failed authentication (audited). Not falling through:
    otherwise whoever edited the row could hand the task the next backend's credential instead."""
