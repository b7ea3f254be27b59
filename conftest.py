"""Repository-root pytest hook: make every test (and every subprocess a test starts)
import runlease from *this* checkout's src/, even when several checkouts share one venv."""

import os
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent / "src")
_AIRFLOW_PROVIDER = str(Path(__file__).resolve().parent / "airflow_provider")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_SRC, _AIRFLOW_PROVIDER, os.environ.get("PYTHONPATH", "")) if p
)
