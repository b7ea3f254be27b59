"""The rotation DAG as the tests run it: no schedule, instant retries, failures recorded to a file.

The failure file lives beside AIRFLOW_HOME (in the test site's root), so the
test can prove a failed rotation went through Airflow's own failure path
(``on_failure_callback``) and which secret it was.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from runlease_airflow.rotation_dag import rotation_dag


def record_failure(context: dict) -> None:
    ti = context["ti"]
    out = Path(os.environ["AIRFLOW_HOME"]).parent / "rotation-failures.jsonl"
    with out.open("a") as f:
        f.write(json.dumps({"task_id": ti.task_id, "map_index": ti.map_index, "run_id": ti.run_id,
                            "secret": ti.rendered_map_index}) + "\n")


rl_rotation = rotation_dag("rl_rotation", schedule=None, prefix="dev/", retries=1, retry_delay=timedelta(seconds=0),
                           on_failure_callback=record_failure)
