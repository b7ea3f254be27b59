"""Repository-root pytest hook: make every test (and every subprocess a test starts)
import runlease from *this* checkout's src/, even when several checkouts share one venv."""

import os
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p)
