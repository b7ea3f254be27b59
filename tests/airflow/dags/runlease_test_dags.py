"""DAGs the Airflow tests run. They name secrets by ID only; the tests plant the values.

- ``rl_leaky`` tries hard to leak: prints, logs and echoes its credentials, and
  raises an exception carrying one. Every trace must be masked on the executor path.
  Its echo task does not push its output as an XCom: an XCom is task *data*
  stored as-is in the metadata database, and a task that returns a credential
  as its result stores it there whatever the secrets backend does.
- ``rl_retry`` leases on every try and fails its first try.
- ``rl_skip`` leases and then skips itself.
- ``rl_mapped`` leases from two mapped task instances.
- ``untrusted_reporting`` is not granted the warehouse by the test policy.
- ``rl_killed`` leases and then SIGKILLs its own task process (executor path only:
  in-process it would kill the test runner), so the task-end listener never runs there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseHook, Variable, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

log = logging.getLogger("rl_test_dags")
START = datetime(2026, 1, 1)

with DAG(dag_id="rl_leaky", schedule=None, start_date=START, catchup=False) as leaky:

    @task
    def print_everything() -> None:
        conn = BaseHook.get_connection("warehouse")
        token = Variable.get("api_token")
        print(f"stdout password={conn.password} uri={conn.get_uri()} token={token}")
        print(f"stderr password={conn.password}", file=sys.stderr)
        log.warning("logged password=%s extra=%s", conn.password, conn.extra)
        log.warning("logged api key=%s", conn.extra_dejson["api_key"])

    echo_template = BashOperator(
        task_id="echo_template",
        bash_command='echo "dsn=$DSN pw=$PW tok=$TOK"',
        env={"DSN": "{{ conn.warehouse.get_uri() }}", "PW": "{{ conn.warehouse.password }}",
             "TOK": "{{ var.value.api_token }}"},
        append_env=True,
        do_xcom_push=False,
    )

    @task(retries=0)
    def raise_with_secret() -> None:
        conn = BaseHook.get_connection("warehouse")
        raise RuntimeError(f"could not connect with password {conn.password}")

    print_everything() >> echo_template >> raise_with_secret()


with DAG(dag_id="rl_retry", schedule=None, start_date=START, catchup=False) as retry:

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky() -> None:
        Variable.get("api_token")
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("first try fails on purpose")

    flaky()


with DAG(dag_id="rl_skip", schedule=None, start_date=START, catchup=False) as skip:

    @task
    def skip_after_lookup() -> None:
        Variable.get("api_token")
        raise AirflowSkipException("nothing new to process")

    skip_after_lookup()


with DAG(dag_id="rl_mapped", schedule=None, start_date=START, catchup=False) as mapped:

    @task
    def use_connection(shard: int) -> int:
        BaseHook.get_connection("warehouse")
        BaseHook.get_connection("warehouse")  # the second lookup is served from the lease cache
        return shard

    use_connection.expand(shard=[0, 1])


with DAG(dag_id="untrusted_reporting", schedule=None, start_date=START, catchup=False) as untrusted:

    @task(retries=0)
    def read_warehouse() -> None:
        BaseHook.get_connection("warehouse")

    read_warehouse()


with DAG(dag_id="rl_killed", schedule=None, start_date=START, catchup=False) as killed:

    @task(retries=0)
    def killed_mid_task() -> None:
        BaseHook.get_connection("warehouse")
        os.kill(os.getpid(), signal.SIGKILL)

    killed_mid_task()
