"""A training pipeline whose tasks name connections by ID only: no credential is in this file.

Copy it into your DAGs folder with Airflow configured to use runlease::

    [secrets]
    backend = runlease_airflow.secrets.RunleaseBackend
    backend_kwargs = {"env": "dev"}

and these secrets in the runlease store (``runlease put <path> --stdin``):

- ``dev/connections/warehouse``          the feature warehouse (any Airflow connection URI or JSON)
- ``dev/connections/model_registry``     where trained models are published
- ``dev/variables/feature_store_token``  an API token

Each task resolves what it needs at run time. Every value is leased to the
task try that asked (dag, run, task, try), masked in its log, recorded in the
audit trail, and revoked by the runlease listener when the try ends.
"""

from __future__ import annotations

import logging
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseHook, task

from runlease_airflow.hooks.runlease import RunleaseHook

log = logging.getLogger(__name__)

with DAG(
    dag_id="training_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["runlease", "example"],
) as dag:
    # 1. Through templates: Airflow renders these while preparing the task, so the
    #    DSN and token exist only in this task's environment, never in the DAG file.
    #    A real task would run e.g. `psql "$WAREHOUSE_DSN" -f extract.sql`. Nothing
    #    derived from the DSN is echoed: BashOperator pushes its last output line as
    #    an XCom, and XComs are stored unmasked -- they are data, not logs.
    extract_features = BashOperator(
        task_id="extract_features",
        bash_command='test -n "$WAREHOUSE_DSN" && test -n "$FEATURE_STORE_TOKEN" && echo "features extracted"',
        env={
            "WAREHOUSE_DSN": "{{ conn.warehouse.get_uri() }}",
            "FEATURE_STORE_TOKEN": "{{ var.value.feature_store_token }}",
        },
        append_env=True,
    )

    # 2. Through a hook in Python: BaseHook.get_connection is what every Airflow hook
    #    calls, so e.g. PostgresHook(postgres_conn_id="warehouse") is leased the same way.
    @task
    def train_model() -> dict[str, str]:
        warehouse = BaseHook.get_connection("warehouse")
        log.info("training on %s@%s:%s/%s", warehouse.login, warehouse.host, warehouse.port, warehouse.schema)
        return {"model": "churn-classifier", "trained_on": str(warehouse.host)}

    # 3. An explicit short lease: publishing needs the registry for a few minutes only.
    @task
    def publish_model(model: dict[str, str]) -> None:
        registry = RunleaseHook().get_leased_connection("model_registry", ttl=300)
        log.info("publishing %s to %s", model["model"], registry.host)

    extract_features >> publish_model(train_model())
