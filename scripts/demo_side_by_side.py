"""Print two runs' audit trails next to each other (the demo's last step).

One ledger holds both an Airflow run and a KFP run; showing them side by
side makes the point that the trail, its chain and its columns are the same
whichever orchestrator asked.
"""

from __future__ import annotations

import sys

from rich.columns import Columns
from rich.console import Console
from rich.table import Table

from runlease.ledger.base import AuditQuery
from runlease.runtime import open_runtime


def run_table(runtime: object, run_id: str) -> Table:
    events = list(runtime.ledger.events(AuditQuery(run_id=run_id)))  # type: ignore[attr-defined]
    orchestrator = events[0].orchestrator if events else "?"
    table = Table(title=f"{orchestrator} run {run_id}")
    for column in ("seq", "action", "task", "try", "path", "outcome"):
        table.add_column(column, overflow="fold")
    for e in events:
        table.add_row(str(e.seq), e.action, e.task_id or "", "" if e.try_number is None else str(e.try_number),
                      (e.path or "").split("/", 1)[-1], e.outcome.value)
    return table


def main(run_ids: list[str]) -> None:
    runtime = open_runtime()
    try:
        Console(width=200).print(Columns([run_table(runtime, r) for r in run_ids], padding=(0, 4)))
        print(runtime.ledger.verify().describe())
    finally:
        runtime.close()


if __name__ == "__main__":
    main(sys.argv[1:])
