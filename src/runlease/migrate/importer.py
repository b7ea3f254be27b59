"""Write :class:`~runlease.migrate.sources.Candidate` items into one environment, check-and-set.

Each write goes through the broker (policy ``admin`` on the path, one audit
event per version), so an import is as accountable as a ``runlease put``.

- A secret that already exists is *skipped* unless ``overwrite``: the write
  uses ``cas=0`` (must not exist), so a secret created by someone else between
  the check and the write is never clobbered.
- With ``overwrite``, the write uses ``cas=<CURRENT version seen>``: if CURRENT
  moves during the import (a rotation, another operator), that one entry
  fails with "changed during import" instead of replacing the newer value.
- ``dry_run`` resolves every path and reports what would happen; nothing is
  written and no audit event is appended.

Outcomes carry paths, versions and reasons, never a value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runlease.errors import ConflictError, InvalidPathError, RunleaseError, SecretNotFoundError
from runlease.migrate.sources import Candidate
from runlease.models import RunIdentity, SecretPath

if TYPE_CHECKING:  # pragma: no cover
    from runlease.broker import Broker

IMPORTED, OVERWRITTEN, SKIPPED, FAILED = "imported", "overwritten", "skipped", "failed"
WOULD_IMPORT, WOULD_OVERWRITE = "would import", "would overwrite"


@dataclass(frozen=True)
class Outcome:
    """What happened to one candidate (no value)."""

    kind: str
    name: str
    origin: str
    path: str | None
    status: str
    version: int | None = None
    detail: str = ""

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "source": self.origin, "path": self.path,
                "status": self.status, "version": self.version, "detail": self.detail}


def _current_version(broker: "Broker", path: SecretPath) -> int | None:
    try:
        return broker.store.resolve(path).version
    except SecretNotFoundError:
        return None


def import_one(broker: "Broker", env: str, cand: Candidate, who: RunIdentity, *, overwrite: bool,
               dry_run: bool) -> Outcome:
    def out(status: str, path: SecretPath | None = None, version: int | None = None, detail: str = "") -> Outcome:
        return Outcome(cand.kind, cand.name, cand.origin, str(path) if path else None, status, version, detail)

    if cand.skip_reason is not None:
        return out(SKIPPED, detail=cand.skip_reason)
    try:
        path = SecretPath.of(env, cand.kind, cand.name)
    except InvalidPathError as err:
        return out(FAILED, detail=str(err))
    if cand.error is not None or cand.value is None:
        return out(FAILED, path, detail=cand.error or "no value")
    current = _current_version(broker, path)
    if current is not None and not overwrite:
        return out(SKIPPED, path, current, f"exists (CURRENT v{current}); --overwrite replaces it")
    if dry_run:
        return out(WOULD_IMPORT if current is None else WOULD_OVERWRITE, path, current)
    try:
        version = broker.put(path, cand.value, who, kind=cand.kind, cas=current or 0)
    except ConflictError:
        if current is None:
            return out(SKIPPED, path, detail="created by someone else during the import; --overwrite replaces it")
        return out(FAILED, path, detail=f"changed during the import (CURRENT is no longer v{current}); not replaced")
    except RunleaseError as err:
        return out(FAILED, path, detail=f"{type(err).__name__}: {err}")
    return out(IMPORTED if current is None else OVERWRITTEN, path, version)


def import_all(broker: "Broker", env: str, candidates: Iterable[Candidate], who: RunIdentity, *,
               overwrite: bool = False, dry_run: bool = False,
               progress: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Import every candidate in order; a failure of one never stops the others."""
    results = []
    for cand in candidates:
        outcome = import_one(broker, env, cand, who, overwrite=overwrite, dry_run=dry_run)
        results.append(outcome)
        if progress is not None:
            progress(outcome)
    return results


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    return counts
