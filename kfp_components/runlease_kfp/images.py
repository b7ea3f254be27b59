"""The container image runlease's KFP components run in.

A lightweight KFP component runs its function inside ``base_image``; with
``install_kfp_package=False`` nothing is pip-installed at start-up, so the
image must already contain ``runlease[kfp]`` (and with it kfp, which the
component's ``python -m kfp.dsl.executor_main`` entry point needs). Build one
from docs/kfp.md and point ``RUNLEASE_KFP_IMAGE`` at it when compiling for a
cluster. kfp.local's ``SubprocessRunner`` ignores the image and runs the
component with the current interpreter (``local/subprocess_task_handler.py``:
``sys.executable`` when ``use_venv=False``); it only warns when the image
name does not contain "python", which the default avoids.
"""

from __future__ import annotations

import os

IMAGE_ENV = "RUNLEASE_KFP_IMAGE"
DEFAULT_IMAGE = "python:3.11-slim"


def component_image() -> str:
    """``$RUNLEASE_KFP_IMAGE``, read when a component module is imported (i.e. at compile time)."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE
