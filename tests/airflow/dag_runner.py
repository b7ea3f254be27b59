"""Run DAGs with ``dag.test()`` in this (fresh) process and print one JSON result line per DAG.

The tests start this in a subprocess because Airflow reads its configuration
(AIRFLOW_HOME, the secrets backend) once per process at import time. Usage::

    python dag_runner.py DAG_ID [DAG_ID ...] [--executor]

DAGs are loaded from every ``*.py`` file in ``AIRFLOW__CORE__DAGS_FOLDER``.
``--executor`` runs ``dag.test(use_executor=True)``: with LocalExecutor each
task runs supervised in its own process, as in production (the API server
named by AIRFLOW__CORE__EXECUTION_API_SERVER_URL must be up).

Shutdown watchdog (``--executor`` only). Airflow 3.3.2's ``LocalExecutor.end()``
sends one ``None`` per live worker and joins them without a timeout; now and
then a worker stays idle in ``SimpleQueue.get`` and the join never returns
(upstream apache/airflow#67870; TestLocalExecutor.test_execution is quarantined
for it, #45329). By then the dag run is final in the metadata DB. The watchdog
waits for that, gives ``dag.test()`` a grace period, then kills the idle
LocalExecutor workers so the join returns and the run's result is read as usual.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

SHUTDOWN_GRACE_S = 10.0
FINAL_STATES = {"success", "failed"}


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


def latest_run_state(dag_id: str, started_after: datetime) -> str | None:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id, DagRun.start_date >= started_after)
            .order_by(DagRun.start_date.desc()).limit(1)
        ).first()
        return None if run is None else str(getattr(run.state, "value", run.state))


def unstick_executor_shutdown(dag_id: str, started_after: datetime, returned: threading.Event) -> None:
    final_since: float | None = None
    while not returned.wait(1.0):
        if latest_run_state(dag_id, started_after) not in FINAL_STATES:
            continue
        final_since = final_since or time.monotonic()
        if time.monotonic() - final_since >= SHUTDOWN_GRACE_S:
            idle = multiprocessing.active_children()
            print(f"dag_runner: {dag_id} finished but LocalExecutor shutdown hung for {SHUTDOWN_GRACE_S:.0f}s; "
                  f"killing {len(idle)} idle worker(s)", file=sys.stderr, flush=True)
            for worker in idle:
                worker.kill()
            final_since = None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_ids", nargs="+")
    parser.add_argument("--executor", action="store_true")
    args = parser.parse_args()

    dags = load_dags(Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]))
    for dag_id in args.dag_ids:
        returned = threading.Event()
        if args.executor:
            started_after = datetime.now(timezone.utc)
            # Run the watchdog's query once here first: its imports (airflow.models loads lazily) and
            # SQLAlchemy's mapper set-up must not happen in a thread while the LocalExecutor forks its
            # workers, or a child can inherit a held import lock and hang (seen: a worker stuck in
            # airflow.models.import_all_models).
            latest_run_state(dag_id, started_after)
            threading.Thread(target=unstick_executor_shutdown, args=(dag_id, started_after, returned),
                             daemon=True).start()
        try:
            dag_run = dags[dag_id].test(use_executor=args.executor)
        finally:
            returned.set()
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
