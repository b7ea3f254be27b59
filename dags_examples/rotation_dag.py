"""Scheduled credential rotation: copy this file into your DAGs folder.

Every hour it rotates each secret whose rotation is due and retires the
previous credential of each finished rotation whose grace period is over.
Secrets opt in with a rotation policy, e.g.::

    runlease rotation set prod/connections/warehouse --rotator postgres \\
        --interval 30d --grace 2h --owner data-platform \\
        --setting admin=prod/connections/warehouse_admin --setting parent_role=warehouse_rw

    runlease rotation set prod/tokens/serving_api_key --rotator token --interval 7d --grace 1h

and ``runlease rotation status`` shows what is due. The tasks act as
``airflow:runlease_rotation:<task>``: grant that ``rotate`` on the rotated
paths and ``read`` on the admin connections in runlease's policy file. A
secret whose rotation fails fails its own task group (and the run, through
Airflow's usual failure path and ``on_failure_callback``); the others still
rotate.
"""

from __future__ import annotations

import logging

from runlease_airflow.rotation_dag import rotation_dag

log = logging.getLogger(__name__)


def tell_the_owner(context: dict) -> None:
    """Replace with your pager or chat hook. The context names the task and the secret (map index)."""
    ti = context["ti"]
    log.error("runlease rotation failed: %s (%s) in run %s", ti.task_id, ti.rendered_map_index, ti.run_id)


dag = rotation_dag("runlease_rotation", schedule="@hourly", on_failure_callback=tell_the_owner)
