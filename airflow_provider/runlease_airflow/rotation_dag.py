"""The scheduled rotation DAG: every secret whose rotation is due, rotated, one task group each.

Use it from a DAG file::

    from runlease_airflow.rotation_dag import rotation_dag

    dag = rotation_dag()                      # hourly, every environment
    dag = rotation_dag(prefix="prod/", on_failure_callback=page_the_owner)

Each run:

1. ``find_retirable`` / ``retire``: every secret whose finished rotation is
   past its grace period gets its PREVIOUS credential disabled in the
   target (one mapped task per secret).
2. ``find_due`` (runs whatever happened in 1.): every secret whose CURRENT
   is older than its policy's interval, plus rotations a crash interrupted
   (they are resumed under their own token).
3. ``rotate``: a task group mapped over those secrets, one task per step --
   ``create`` >> ``set`` >> ``test`` >> ``finish``. ``set`` and ``test``
   retry (a target that is briefly unreachable); a *failed test* is final
   (AirflowFailException: PENDING was discarded, retrying cannot help).

A secret's failure fails its own tasks -- Airflow's normal failure path:
task state, ``on_failure_callback``, email -- and the DAG run, but never the
other secrets' groups. A failed secret stays due, so the next run tries (and
alerts) again. The DAG holds no values: XComs carry paths and rotation
tokens only, and every step is in runlease's audit trail with the task's
run identity.

Tasks act as ``airflow:<dag_id>:<task>`` in runlease policy: grant them
``rotate`` on the paths they rotate and ``read`` on the admin connections
the rotators use. The store and policy are the configured secrets
backend's (or ``backend_kwargs``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from runlease.models import utcnow
from runlease.rotation.engine import RotationEngine
from runlease.rotation.errors import RotationFailedError, RotationTestFailed
from runlease.rotation.state import Status, Step
from runlease.rotation.status import scan

#: Namespace for rotation tokens derived from a DAG run (a retried create reuses its token).
TOKEN_NAMESPACE = uuid.UUID("6f1d3c0e-8a53-4c55-9a57-2b8e3e9b4a10")


def _engine(backend_kwargs: dict[str, Any] | None) -> RotationEngine:
    from runlease_airflow.hooks.runlease import RunleaseHook

    return RotationEngine(RunleaseHook(**(backend_kwargs or {})).backend.broker)


def _identity() -> Any:
    from runlease_airflow.identity import current_caller

    return current_caller().identity


def run_token(run_id: str, path: str) -> str:
    """The rotation token for ``path`` in one DAG run: a retried ``create`` resumes, never restarts."""
    return uuid.uuid5(TOKEN_NAMESPACE, f"{run_id}|{path}").hex


#: Mapped instances are labelled with the secret they work on (the UI, ``ti.rendered_map_index``).
MAP_INDEX_TEMPLATE = "{{ runlease_secret }}"


def _label(path: str) -> None:
    from airflow.sdk import get_current_context

    get_current_context()["runlease_secret"] = path  # type: ignore[literal-required]


def _final(err: Exception) -> Exception:
    """A verdict retrying cannot change becomes AirflowFailException (no retries, straight to failed)."""
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(str(err))


def rotation_dag(
    dag_id: str = "runlease_rotation",
    *,
    schedule: Any = "@hourly",
    prefix: str = "",
    start_date: datetime = datetime(2026, 1, 1),
    retries: int = 3,
    retry_delay: timedelta = timedelta(minutes=2),
    on_failure_callback: Callable[[Any], None] | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    **dag_kwargs: Any,
) -> Any:
    """Build the rotation DAG. ``prefix`` limits it to paths starting with it (``prod/``)."""
    from airflow.sdk import DAG, TriggerRule, task, task_group

    default_args = dict(dag_kwargs.pop("default_args", {}) or {})
    if on_failure_callback is not None:
        default_args.setdefault("on_failure_callback", on_failure_callback)

    with DAG(dag_id=dag_id, schedule=schedule, start_date=start_date, catchup=False, max_active_runs=1,
             tags=tags if tags is not None else ["runlease", "rotation"], default_args=default_args,
             **dag_kwargs) as dag:

        @task
        def find_retirable() -> list[str]:
            """Secrets whose finished rotation is past its grace period."""
            now = utcnow()
            return [str(r.path) for r in scan(_engine(backend_kwargs).store, prefix) if r.is_retirable(now)]

        @task(retries=retries, retry_delay=retry_delay, map_index_template=MAP_INDEX_TEMPLATE)
        def retire(path: str) -> None:
            """Disable the PREVIOUS credential in the target, drop its label."""
            _label(path)
            _engine(backend_kwargs).retire(path, _identity())

        @task(trigger_rule=TriggerRule.ALL_DONE)
        def find_due() -> list[str]:
            """Secrets to rotate now: CURRENT older than the interval, or a rotation to resume."""
            now = utcnow()
            return [str(r.path) for r in scan(_engine(backend_kwargs).store, prefix) if r.is_due(now)]

        @task(map_index_template=MAP_INDEX_TEMPLATE)
        def create(path: str) -> str:
            """Claim the secret (or resume its interrupted rotation) and stage the new version PENDING."""
            from airflow.sdk import get_current_context

            _label(path)
            engine, who = _engine(backend_kwargs), _identity()
            running = engine.state(path)
            if running is not None and running.status is Status.ROTATING:
                token = running.token  # a crash interrupted it: resume under its own token
            else:
                token = run_token(str(get_current_context()["run_id"]), path)
            try:
                state = engine.start(path, who, token)
                if state.status is Status.FAILED:
                    raise RotationFailedError(f"rotation {token} of {path} failed: {state.reason}")
                engine.run_step(path, who, Step.CREATE, token)
            except RotationFailedError as err:
                raise _final(err) from None
            return token

        def step_task(step: Step) -> Any:
            def run(path: str, token: str) -> str:
                _label(path)
                try:
                    _engine(backend_kwargs).run_step(path, _identity(), step, token)
                except (RotationTestFailed, RotationFailedError) as err:
                    raise _final(err) from None
                return token

            run.__name__ = run.__qualname__ = step.value
            run.__doc__ = f"Rotation step {step.value!r} (see runlease.rotation.engine)."
            retry = step in (Step.SET, Step.TEST)
            return task(task_id=step.value, retries=retries if retry else 0, retry_delay=retry_delay,
                        map_index_template=MAP_INDEX_TEMPLATE)(run)

        set_step, test_step, finish_step = step_task(Step.SET), step_task(Step.TEST), step_task(Step.FINISH)

        @task_group(group_id="rotate")
        def rotate(path: str) -> None:
            token = create(path)
            finish_step(path, test_step(path, set_step(path, token)))

        retired = retire.expand(path=find_retirable())
        due = find_due()
        retired >> due
        rotate.expand(path=due)

    return dag
