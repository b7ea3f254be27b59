"""Run DAGs with ``dag.test()`` in this (fresh) process and print one JSON result line per DAG.

The tests start this in a subprocess because Airflow reads its configuration
(AIRFLOW_HOME, the secrets backend) once per process at import time. Usage::

    python dag_runner.py DAG_ID [DAG_ID ...] [--executor]

DAGs are loaded from every ``*.py`` file in ``AIRFLOW__CORE__DAGS_FOLDER``.
``--executor`` runs ``dag.test(use_executor=True)``: with LocalExecutor each
task runs supervised in its own process, as in production (the API server
named by AIRFLOW__CORE__EXECUTION_API_SERVER_URL must be up).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path


def load_dags(folder: Path) -> dict:
    from airflow.sdk import DAG

    dags = {}
    for dag_file in sorted(folder.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"rl_dags_{dag_file.stem}", dag_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dags.update({obj.dag_id: obj for obj in vars(module).values() if isinstance(obj, DAG)})
    return dags


def forget_task_context() -> None:
    """In-process runs leave the last task's AIRFLOW_CTX_* in os.environ (a real task process
    exits instead); drop them so the next DAG's parse-time lookups are not attributed to it."""
    for name in [n for n in os.environ if n.startswith("AIRFLOW_CTX_")]:
        del os.environ[name]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_ids", nargs="+")
    parser.add_argument("--executor", action="store_true")
    args = parser.parse_args()

    dags = load_dags(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]))
    for dag_id in args.dag_ids:
        dag_run = dags[dag_id].test(use_executor=args.executor)
        forget_task_context()
        tries: dict[str, int] = {}
        states: dict[str, str] = {}
        for ti in dag_run.get_task_instances():
            key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            states[key] = str(getattr(ti.state, "value", ti.state))
            tries[key] = int(ti.try_number)
        result = {"dag_id": dag_id, "run_id": dag_run.run_id,
                  "state": str(getattr(dag_run.state, "value", dag_run.state)),
                  "task_states": states, "task_tries": tries}
        print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
