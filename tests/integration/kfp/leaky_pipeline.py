"""A hostile pipeline for the local-run tests: one step prints and logs its credential, one dies holding one.

Run as a script (``python leaky_pipeline.py PIPELINE_ROOT``) so kfp.local's
global state and its component subprocesses live and die with one process.

* ``leaky_step`` prints, logs and writes to stderr the password it leased,
  then exits normally: everything kfp.local captures must show ``***``.
* ``killed_step`` takes a lease and ends its process with ``os._exit(0)``:
  no ``with`` exit, no ``atexit``, like a SIGKILL or an OOM kill (but with
  status 0, because kfp.local skips the exit task after a failed step).
  Only the pipeline's exit task can revoke that lease.
"""

import sys

from kfp import dsl, local

import runlease_kfp

PIPELINE_NAME = "leaky-pipeline"


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def leaky_step(runlease_run_id: str = "", runlease_pipeline: str = "", runlease_task: str = "") -> str:
    import logging
    import sys

    import runlease_kfp

    with runlease_kfp.lease("dev/connections/warehouse") as conn:
        print("password via print:", conn["password"])
        logging.getLogger("leaky").warning("password via logging: %s", conn["password"])
        print(f"password via stderr: {conn['password']}", file=sys.stderr)
        print(f"dsn: postgresql://{conn['login']}:{conn['password']}@{conn['host']}/{conn['schema']}")
    return "done"


@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def killed_step(after: str, runlease_run_id: str = "", runlease_pipeline: str = "", runlease_task: str = ""):
    import os

    import runlease_kfp

    held = runlease_kfp.lease("dev/tokens/experiment_tracker", kind="tokens")
    held.__enter__()  # keep `held` referenced: a dropped block is revoked when it is garbage-collected
    os._exit(0)


@dsl.pipeline(name=PIPELINE_NAME)
def leaky_pipeline():
    with runlease_kfp.leased_run(audit_report=False):
        first = leaky_step()
        killed_step(after=first.output)


if __name__ == "__main__":
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[1], raise_on_error=True)
    leaky_pipeline()
