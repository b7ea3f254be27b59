"""Who may see which runlease page: Airflow's auth manager decides, exactly as for Airflow's own pages.

The caller is the user of the API server's JWT (the ``_token`` cookie the
Airflow UI holds, or an ``Authorization: Bearer`` header), resolved by
Airflow's own ``get_user`` dependency, so a forged, expired or revoked token
is refused the same way Airflow refuses it.

- A run's (or task's) credentials: ``is_authorized_dag(method="GET",
  access_entity=RUN / TASK_INSTANCE, details=DagDetails(id=dag_id))`` -- a user
  who cannot read a DAG's runs cannot see their leases, denials or audit events.
- The run index lists only DAGs for which that same check passes.
- The rotation page: ``is_authorized_connection(method="GET")`` -- it shows
  which connections exist, who owns them and how old their credentials are,
  which is what reading the connection list shows in Airflow (in the simple
  auth manager: role ``op`` or ``admin``; ``viewer`` and ``user`` are refused).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

ROTATION_PERMISSION = "connections: GET (is_authorized_connection)"


def auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def _team_name(dag_id: str) -> str | None:
    try:
        from airflow.models.dag import DagModel

        return DagModel.get_team_name(dag_id)
    except Exception as err:  # noqa: BLE001 - no team lookup (older schema, unknown DAG) means no team
        log.debug("runlease ui: no team for %s (%s)", dag_id, type(err).__name__)
        return None


def can_read_dag_runs(user: Any, dag_id: str, *, task_level: bool = False) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    entity = DagAccessEntity.TASK_INSTANCE if task_level else DagAccessEntity.RUN
    return bool(auth_manager().is_authorized_dag(
        method="GET", access_entity=entity, details=DagDetails(id=dag_id, team_name=_team_name(dag_id)), user=user,
    ))


def can_read_rotation(user: Any) -> bool:
    return bool(auth_manager().is_authorized_connection(method="GET", user=user))


def login_url(next_url: str) -> str:
    try:
        return str(auth_manager().get_url_login(next_url=next_url))
    except Exception:  # noqa: BLE001 - a manager without a login page: send to the UI root
        return "/"


def username(user: Any) -> str:
    try:
        return str(user.get_name())
    except Exception:  # noqa: BLE001
        return "?"
