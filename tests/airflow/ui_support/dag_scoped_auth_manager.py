"""Airflow's SimpleAuthManager, plus per-user DAG denials: what a real deployment's auth manager can express.

The simple auth manager grants by role only (every viewer may read every
DAG), so it cannot show that runlease's pages follow a *per-DAG* decision.
This subclass changes one thing: users named in
``RUNLEASE_UI_TEST_DAG_DENIALS`` (JSON ``{"user": ["dag_id", ...]}``) are refused
those DAGs in ``is_authorized_dag`` and ``filter_authorized_dag_ids`` -- as
FAB or Keycloak would refuse a DAG outside the user's permissions. Login,
tokens and every other decision are the simple auth manager's own.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def _denied(user: Any) -> set[str]:
    table = json.loads(os.environ.get("RUNLEASE_UI_TEST_DAG_DENIALS", "{}"))
    return set(table.get(user.get_name(), []))


class DagScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        if details is not None and details.id in _denied(user):
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)

    def filter_authorized_dag_ids(self, *, dag_ids: set[str], user: Any, method: Any = "GET",
                                  team_name: str | None = None) -> set[str]:
        allowed = super().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method=method, team_name=team_name)
        return allowed - _denied(user)
