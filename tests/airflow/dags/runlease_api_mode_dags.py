"""DAGs of the API-server-mode tests: two tenants, each granted its own connection (require_verified).

The workers running them have no runlease setting, key or home (the tests hide
the API server's home with a tmpfs in a separate mount namespace). Each task
prints ``ATTACK <name> <outcome>`` lines naming what an attack got -- an
exception class or ``nothing`` -- never a value, and the tests read them from
the task logs.

- ``rl_api_a.use_granted`` uses its own connection and variables (printing them:
  the log must mask them), asks for tenant B's connection (must be denied), and
  tries to open a runlease broker, read a key from its environment and list the
  API server's runlease home.
- ``rl_api_a.forge_context`` runs a child process claiming to be DAG B with
  ``AIRFLOW_CTX_*`` and asks for B's connection both the stock way and through
  a RunleaseBackend of its own.
- ``rl_api_a.echo_template`` renders the granted connection and a variable into
  a templated field.
- ``rl_api_a.flaky`` leases on both tries and fails its first (retry).
- ``rl_api_a.echo_template``'s success callback asks again after the API server
  recorded the try's success: an audited read, no new lease.
- ``rl_api_b.use_granted_then_fail`` leases B's connection and fails (failure);
  ``rl_api_b.skip_after_lookup`` leases it and skips itself (skipped).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, BaseHook, Variable, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

START = datetime(2026, 1, 1)
#: Where the API server's runlease home is (a path is no secret: an attacker can guess it).
API_HOME = os.environ.get("RL_TEST_API_HOME", "/nonexistent")


def attack(name: str, action) -> None:
    """Run one attack and print what it got: an exception class name, or 'nothing'/'got-value'."""
    try:
        result = action()
    except BaseException as err:  # noqa: BLE001 - the class name is the outcome
        print(f"ATTACK {name} {type(err).__name__}", flush=True)
        return
    print(f"ATTACK {name} {'nothing' if not result else 'got-value'}", flush=True)


def open_broker_and_lease_b() -> object:
    from runlease.models import RunIdentity
    from runlease.runtime import open_runtime
    from runlease.settings import Settings

    runtime = open_runtime(Settings(home=API_HOME))
    return runtime.broker.lease("dev/connections/tenant_b_db", RunIdentity(orchestrator="airflow", pipeline="rl_api_b"))


def runlease_env_names() -> list[str]:
    return [n for n in os.environ if n.startswith(("RUNLEASE_", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__SECRETS"))]


#: What a BashOperator's child process runs, claiming with AIRFLOW_CTX_* to be DAG B's task.
FORGE_SCRIPT = """
import os

def attack(name, action):
    try:
        result = action()
    except BaseException as err:
        print(f"ATTACK {name} {type(err).__name__}", flush=True)
        return
    print(f"ATTACK {name} {'nothing' if not result else 'got-value'}", flush=True)

def stock_lookup():
    # Importing Airflow here already fails: the task runner gave its children an unusable DB URL.
    from airflow.sdk import BaseHook
    return BaseHook.get_connection("tenant_b_db")

attack("forged-ctx-stock-lookup", stock_lookup)

def own_backend():
    from runlease_airflow.secrets import RunleaseBackend
    return RunleaseBackend(home=os.environ["RL_TEST_API_HOME"], env="dev").get_connection("tenant_b_db")

attack("forged-ctx-own-backend", own_backend)
"""


def home_entries() -> list[str]:
    return os.listdir(API_HOME) if os.path.isdir(API_HOME) else []


def use_after_success(context) -> None:
    """A success callback: runs after the supervisor reported success to the API server."""
    print(f"callback password={BaseHook.get_connection('tenant_a_db').password}", flush=True)


with DAG(dag_id="rl_api_a", schedule=None, start_date=START, catchup=False) as api_a:

    @task
    def use_granted() -> None:
        conn = BaseHook.get_connection("tenant_a_db")
        print(f"stdout password={conn.password} uri={conn.get_uri()}")
        print(f"extra api key={conn.extra_dejson['api_key']} extra={conn.extra}")
        print(f"note={Variable.get('tenant_a_note')} token={Variable.get('tenant_a_token')}")
        print(f"stderr password={conn.password}", file=sys.stderr)
        attack("other-dag-connection", lambda: BaseHook.get_connection("tenant_b_db"))
        attack("other-dag-variable", lambda: Variable.get("tenant_b_note"))
        # Not held by runlease: the API server's next backend answers (404 from runlease is a fall-through).
        attack("not-held-by-runlease", lambda: BaseHook.get_connection("tenant_shared").host == "shared.internal")
        attack("held-nowhere", lambda: BaseHook.get_connection("tenant_nowhere"))
        attack("open-broker", open_broker_and_lease_b)
        attack("key-in-env", runlease_env_names)
        attack("home-listing", home_entries)
        attack("key-file", lambda: open(os.path.join(API_HOME, "master.key"), "rb").read())

    forge_context = BashOperator(
        task_id="forge_context",
        bash_command=f"{sys.executable} - <<'RL_EOF'\n{FORGE_SCRIPT}\nRL_EOF\n",
        env={"AIRFLOW_CTX_DAG_ID": "rl_api_b", "AIRFLOW_CTX_TASK_ID": "use_granted_then_fail",
             "AIRFLOW_CTX_DAG_RUN_ID": "forged", "AIRFLOW_CTX_TRY_NUMBER": "1"},
        append_env=True,
        do_xcom_push=False,
    )

    echo_template = BashOperator(
        task_id="echo_template",
        bash_command='echo "dsn=$DSN pw=$PW note=$NOTE"',
        env={"DSN": "{{ conn.tenant_a_db.get_uri() }}", "PW": "{{ conn.tenant_a_db.password }}",
             "NOTE": "{{ var.value.tenant_a_note }}"},
        append_env=True,
        do_xcom_push=False,
        on_success_callback=use_after_success,
    )

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky() -> None:
        BaseHook.get_connection("tenant_a_db")
        if get_current_context()["ti"].try_number == 1:
            raise RuntimeError("first try fails on purpose")

    use_granted() >> forge_context >> echo_template >> flaky()


with DAG(dag_id="rl_api_b", schedule=None, start_date=START, catchup=False) as api_b:

    @task(retries=0)
    def use_granted_then_fail() -> None:
        conn = BaseHook.get_connection("tenant_b_db")
        print(f"b password={conn.password}")
        attack("other-dag-connection", lambda: BaseHook.get_connection("tenant_a_db"))
        raise RuntimeError("fails on purpose after using its lease")

    @task
    def skip_after_lookup() -> None:
        BaseHook.get_connection("tenant_b_db")
        raise AirflowSkipException("skips on purpose after using its lease")

    use_granted_then_fail()
    skip_after_lookup()
