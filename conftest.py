"""Repository-root pytest hook: make every test (and every subprocess a test starts)
import runlease from *this* checkout's src/, even when several checkouts share one venv."""

import os
from pathlib import Path

_SRC = str(Path(__file__).resolve().parent / "src")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, os.environ.get("PYTHONPATH", "")) if p)

# kfp.local runs every component in a fresh `python -m kfp.dsl.executor_main`
# subprocess; it must import runlease_kfp from this checkout too.
_KFP_COMPONENTS = str(Path(__file__).resolve().parent / "kfp_components")
os.environ["PYTHONPATH"] = os.pathsep.join((_KFP_COMPONENTS, os.environ["PYTHONPATH"]))
