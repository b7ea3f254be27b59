"""runlease's Apache Airflow 3 provider: secrets backend, revocation listener, hook.

Importing this package imports neither Airflow nor the runlease runtime, because
Airflow loads the provider-info entry point in every process (scheduler, API
server, workers) and it must stay cheap there. The pieces live in their own
modules:

- :mod:`runlease_airflow.secrets`   -- ``RunleaseBackend`` (``[secrets] backend``)
- :mod:`runlease_airflow.listener`  -- revokes a task's leases when it ends, a run's when the run ends
- :mod:`runlease_airflow.plugin`    -- registers the listener (``airflow.plugins`` entry point)
- :mod:`runlease_airflow.hooks.runlease` -- ``RunleaseHook`` for explicit leases in task code
"""

__version__ = "0.1.0"
