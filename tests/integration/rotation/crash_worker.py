"""Run one rotation and its retire, and SIGKILL this process right after one step point.

    python crash_worker.py HOME PATH POINT STEP

POINT is ``effect`` (the rotator changed the target; nothing of the step is
committed), ``store`` (inside the commit: the new version or the label moves
written, the state record and audit event not yet) or ``commit`` (all of the
step committed). The kill is ``kill -9`` from inside: no finally block, no atexit,
no SQLite close. Exits 3 if the rotation ended without reaching the point,
so a test can tell "crashed where asked" from "never got there".
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from runlease.models import RunIdentity
from runlease.rotation import RotationEngine, Step
from runlease.runtime import open_runtime
from runlease.settings import Settings


def main() -> int:
    home, path, point, step = sys.argv[1:5]

    def after(at: str, done: Step) -> None:
        if at == point and done.value == step:
            os.kill(os.getpid(), signal.SIGKILL)

    runtime = open_runtime(Settings(home=Path(home)))
    engine = RotationEngine(runtime.broker, after=after)
    who = RunIdentity(orchestrator="cli", pipeline="crash-worker", principal="cli:crash-worker")
    engine.rotate(path, who)
    engine.retire(path, who)
    return 3


if __name__ == "__main__":
    sys.exit(main())
