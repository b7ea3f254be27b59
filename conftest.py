"""Repository-root pytest hook: make every test (and every subprocess a test starts)
import runlease from *this* checkout's src/, even when several checkouts share one venv."""

import os
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent / "src")
_ROOT = Path(__file__).resolve().parent
# Subprocesses (kfp.local components, Airflow task processes, concurrency workers)
# must import every source root from this checkout too.
_ROOTS = [str(_ROOT / d) for d in ("src", "airflow_provider", "kfp_components")]
os.environ["PYTHONPATH"] = os.pathsep.join([*_ROOTS, *filter(None, [os.environ.get("PYTHONPATH", "")])])
