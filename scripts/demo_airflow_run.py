"""Run dags_examples/training_pipeline.py once with Airflow's dag.test() and print its run id.

Called by scripts/demo.sh with AIRFLOW_HOME, the DAGs folder and the runlease
secrets backend already configured in the environment (Airflow reads its
configuration at import, so this runs as its own process). Airflow's own
output goes to stderr (the demo shows only its last lines); stdout carries
just the run id.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path


def main() -> int:
    dag_file = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "training_pipeline.py"
    with contextlib.redirect_stdout(sys.stderr):
        spec = importlib.util.spec_from_file_location("training_pipeline", dag_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        dag_run = module.dag.test()
        states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in dag_run.get_task_instances()}
    print(dag_run.run_id)
    print(f"dag run {dag_run.run_id}: {getattr(dag_run.state, 'value', dag_run.state)} {states}", file=sys.stderr)
    return 0 if str(getattr(dag_run.state, "value", dag_run.state)) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
