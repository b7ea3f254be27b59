"""A DAG file that reads a Variable at parse time (top level) -- an anti-pattern runlease audits.

In a worker, Airflow parses this file in the task process before the task runs,
with the parsing context naming this DAG; runlease records that as a
parse-time read bound to the DAG (there is no run yet).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Variable, task

PARSE_TIME_TOKEN = Variable.get("api_token", default="unset")

with DAG(dag_id="rl_parse_time", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as parse_time:

    @task
    def uses_parse_time_value() -> int:
        return len(PARSE_TIME_TOKEN)

    uses_parse_time_value()
