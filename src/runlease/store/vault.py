"""HashiCorp Vault as the central manager: KV v2 versions, stages, check-and-set everywhere.

Layout under the KV v2 mount (default ``secret``) and path prefix (default
``runlease``), for the runlease secret ``prod/connections/warehouse``:

* ``runlease/prod/connections/warehouse`` -- the values. KV version N *is*
  runlease version N; the data map is ``{"value": <connection dict or string>}``.
  Its metadata has ``cas_required=true`` and its ``custom_metadata`` carries a
  readable copy of the stage labels (``runlease-stage-CURRENT: "3"``, ...), so
  ``vault kv metadata get`` shows where the stages point.
* ``runlease/_state/prod/connections/warehouse`` -- the *state record*: a small
  KV v2 secret holding the authoritative stage map, the last version number,
  the soft-delete mark and runlease's metadata (issuer, rotation settings).
  ``_state`` cannot collide with an environment name (those start with a letter).

Why the stage map has its own versioned record instead of living only in
``custom_metadata``: KV v2 offers check-and-set on *data* writes
(``options.cas``) but none on metadata writes, so two rotators that both read
"CURRENT=3" and then write the metadata would silently clobber each other,
and ``move_stage(..., expected=3)`` could succeed twice. Every change of the
state record is instead a data write with ``cas=<the state version we read>``:

1. read the state record (its KV version ``s``);
2. check the caller's condition against it (``expected`` holder, ``cas`` on
   CURRENT, the secret being live) -- a failed condition is a ConflictError;
3. write the new state with ``cas=s``. Vault applies at most one write per
   version, so of two concurrent rotators exactly one succeeds; the other gets
   Vault's check-and-set error, re-reads, re-checks its condition (which now
   fails if the winner moved the same label) and raises ConflictError, or
   retries if the winner only touched something else.

``put`` writes the value first (``cas`` = the value path's current version, so
two writers can never produce the same version number) and then commits the
labels through the state record as above. If the state commit loses to a
writer that committed a *newer* version, the just-written version is
soft-deleted in KV and the put retries with the next number, so CURRENT only
ever moves forward; if the caller's own ``cas`` no longer holds, the version
is soft-deleted and the put raises ConflictError. A crash between the two
writes leaves an unlabelled version that nothing resolves to (it shows in
``history``). The custom_metadata copy is written after every commit and is
for humans only; runlease never reads it, so a lost mirror write (best
effort, warned in the log) cannot mislead a reader.

Reads: the state record is authoritative for which version a stage names.
An uncached ``get`` reads it and, at the same time, the value's latest
version (``concurrent_reads``); the latter is used only when it is the named
version and Vault served it live, so a deleted or destroyed version is never
served and a stage that is not on the latest version (a rollback, an
unpromoted PENDING) gets its own version read. Versions are immutable, so
the store remembers the values it read by ``(path, version)`` and forgets a
path's on delete. Within one ``read_scope`` each state record is fetched once.

KV v2 API: https://developer.hashicorp.com/vault/api-docs/secret/kv/kv-v2
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from runlease.errors import ConflictError, IntegrityError, InvalidPathError, SecretNotFoundError
from runlease.errors import RunleaseError, StoreAccessDeniedError, StoreUnavailableError
from runlease.models import SecretInfo, SecretPath, SecretValue, SecretVersion, Stage, utcnow
from runlease.store.base import Resolved, StoredSecret, metadata_conflicts
from runlease.store.codec import check_value, decoded, encode_json, malformed
from runlease.store.options import options_error
from runlease.store.vault_airflow import AirflowLayout, list_keys, read_entry, to_value
from runlease.store.vault_auth import VaultClientOptions, VaultSession, http_status, no_engine_mounted, vault_session

if TYPE_CHECKING:
    from runlease.keys.crypto import Keyring

log = logging.getLogger(__name__)

STATE_DIR = "_state"
STATE_FORMAT = "runlease-vault-state/v1"
MIRROR_PREFIX = "runlease-"
#: How many lost check-and-set rounds a write tolerates before giving up with ConflictError.
MAX_CAS_ATTEMPTS = 16

#: Plaintext versions a store remembers (see VaultStore.get); values are small, versions immutable.
MAX_REMEMBERED_VERSIONS = 1024
#: Threads reading values beside state records, per process. A lookup uses one; more serve concurrent
#: lookups (the API server's thread pool). The HTTP connection pool is sized above it (vault_auth).
SPECULATION_THREADS = 8
_NOTHING = object()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _speculation_pool() -> ThreadPoolExecutor:
    """The process's reader threads (a forked child gets its own: threads do not survive fork)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=SPECULATION_THREADS, thread_name_prefix="runlease-vault-read")
            _pool.submit(lambda: None)  # start one thread now
        return _pool


def _after_fork_in_child() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _speculate(fn: Callable[..., Any], *args: Any) -> "Future[Any]":
    """Run ``fn(*args)`` on a reader thread in the caller's context (its X-Correlation-ID goes along)."""
    return _speculation_pool().submit(copy_context().run, fn, *args)


#: State records already read in the current read scope (see VaultStore.read_scope).
_read_scope: ContextVar[dict[tuple[int, str], tuple["_State | None", int]] | None] = ContextVar(
    "runlease_vault_read_scope", default=None)


class VaultOptions(VaultClientOptions):
    """``RUNLEASE_STORE_OPTIONS`` for ``RUNLEASE_STORE=vault``."""

    #: KV v2 mount path.
    mount: str = "secret"
    #: Path prefix inside the mount under which runlease keeps its secrets.
    prefix: str = "runlease"
    #: Opt-in, read-only: also find secrets written for Airflow's VaultBackend layout
    #: (runlease.store.vault_airflow); a runlease record of the same path takes precedence.
    airflow_layout: AirflowLayout | None = None
    #: Keep the Vault login token in the runlease home for the next process (sealed under the home's KEK,
    #: bound to this address/namespace/auth role; see runlease.store.vault_token_cache). Off: every
    #: process logs in.
    token_cache: bool = True
    #: On an uncached read, read the value beside the state record (one round trip instead of two; see
    #: VaultStore.get). Off: the state record first, then the version it names.
    concurrent_reads: bool = True


_RFC3339 = re.compile(r"^(?P<head>[^.]+?)(?:\.(?P<fraction>\d+))?(?P<zone>Z|z|[+-]\d{2}:?\d{2})?$")


def parse_time(text: str | None) -> datetime:
    """An aware datetime from Vault's RFC 3339 times and runlease's own ``isoformat()`` stamps.

    Vault writes nanoseconds and ``Z`` (``2024-05-01T10:00:00.123456789Z``),
    runlease's state record ``+00:00`` with microseconds; Python < 3.11 accepts
    neither nanoseconds nor ``Z``. The fraction is cut to microseconds and the
    zone kept (a time without one is UTC), so every result can be compared with
    ``utcnow()``.
    """
    if not text:
        return datetime.fromtimestamp(0, timezone.utc)
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = match["zone"] or "+00:00"
    zone = "+00:00" if zone in ("Z", "z") else zone
    parsed = datetime.fromisoformat(f"{match['head']}.{fraction}{zone}")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


@dataclass
class _State:
    """The authoritative per-secret record (stored as the data of the state path)."""

    stages: dict[str, int] = field(default_factory=dict)
    last_version: int = 0
    created_at: str = ""
    updated_at: str = ""
    deleted_at: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "stages": dict(self.stages),
            "last_version": self.last_version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deleted_at": self.deleted_at,
            "metadata": self.metadata,
        }

    @classmethod
    def from_data(cls, where: str, data: Any) -> "_State":
        try:
            if data.get("format") != STATE_FORMAT:
                raise ValueError("format")
            stages = {str(Stage(k).value): int(v) for k, v in dict(data["stages"]).items()}
            return cls(
                stages=stages,
                last_version=int(data["last_version"]),
                created_at=str(data["created_at"]),
                updated_at=str(data["updated_at"]),
                deleted_at=data.get("deleted_at"),
                metadata=dict(data.get("metadata") or {}),
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise IntegrityError(f"runlease state record {where} is malformed (edited outside runlease?)") from None


class VaultStore:
    """SecretStore over Vault KV v2 (see the module docstring for layout and concurrency)."""

    name = "vault"
    #: For RotationAwareCache: ``get(stage=...)`` costs one round trip here (the state record and the
    #: value are read concurrently, see get) and remembers versions itself; a ``resolve`` first would
    #: make a first read two round trips in a row.
    one_call_reads = True

    def __init__(self, options: VaultOptions, session: VaultSession | None = None) -> None:
        self.options = options
        self.mount = options.mount.strip("/")
        self.prefix = options.prefix.strip("/")
        self.session = session or vault_session(options)
        #: Values by (path, version): versions are immutable, so a remembered one is never stale.
        self._values: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._values_lock = threading.Lock()
        #: How many versions of each path are remembered (a path seen before is not guessed at).
        self._paths_remembered: dict[str, int] = {}
        #: How often the value read beside the state record was the one it named (see get).
        self.speculation_hits = 0
        self.speculation_misses = 0

    @classmethod
    def from_options(cls, raw: dict[str, Any]) -> "VaultStore":
        try:
            options = VaultOptions.model_validate(raw)
        except ValidationError as err:
            raise options_error("vault", err) from None
        return cls(options)

    def prepare(self) -> None:
        """Load the Vault SDK and build the HTTP client now, without sending a request.

        Constructing the store stays light (a CLI command that never reaches Vault
        does not import hvac); a long-lived caller whose first lookup should pay for
        the network only -- the Airflow secrets backend when it is constructed --
        calls this up front.
        """
        self.session.prepare()
        _speculation_pool()  # its thread starts now, not in the first lookup

    def use_token_cache(self, home: Path, keyring: Keyring) -> None:
        """Start processes with the login token an earlier one kept in ``home`` (unless ``token_cache`` is off)."""
        if self.options.token_cache:
            self.session.use_token_cache(home, keyring)

    @property
    def location(self) -> str:
        return f"{self.session.describe()}, KV v2 mount {self.mount!r}, prefix {self.prefix!r}"

    # -- paths and calls -------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _value_path(self, path: SecretPath) -> str:
        return self._join(str(path))

    def _state_path(self, path: SecretPath) -> str:
        return self._join(STATE_DIR, str(path))

    def _where(self, kv_path: str) -> str:
        return f"Vault {self.mount}/{kv_path}"

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        return self.session.call(what, fn)

    @staticmethod
    def _is_cas_error(err: Exception) -> bool:
        return any("check-and-set" in str(e) for e in (getattr(err, "errors", None) or []))

    def _unexpected(self, what: str, err: Exception) -> StoreUnavailableError:
        errors = "; ".join(str(e) for e in (getattr(err, "errors", None) or []))
        return StoreUnavailableError(
            f"{self.session.describe()} answered HTTP {http_status(err)} while {what}" + (f": {errors}" if errors else "")
        )

    def _no_kv2(self, what: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"{self.session.describe()} has no KV v2 secrets engine at {self.mount!r} (HTTP 404 while {what}); "
            f"enable one: `vault secrets enable -path={self.mount} kv-v2`"
        )

    def _raise_if_no_mount(self, err: Exception, what: str) -> None:
        """A 404 is "no such secret" -- unless Vault says no engine is mounted there at all."""
        if no_engine_mounted(err):
            raise self._no_kv2(what) from None

    def _require_kv2_answer(self, resp: Any, what: str) -> None:
        """A KV v2 data write answers with the new version; KV v1 answers 204 (and ignored ``cas``)."""
        version = ((resp or {}).get("data") or {}).get("version") if isinstance(resp, dict) else None
        if not isinstance(version, int):
            raise StoreUnavailableError(
                f"{self.session.describe()}: the mount {self.mount!r} did not answer {what} like KV v2 (no version "
                "in the response: a KV v1 mount overwrites values and has no check-and-set); runlease needs KV v2"
            )

    # -- low-level KV operations --------------------------------------------------

    def _read_state(self, path: SecretPath) -> tuple[_State | None, int]:
        """The state record and its KV version (0 when it does not exist)."""
        import hvac.exceptions as hx

        sp = self._state_path(path)
        what = f"reading {self._where(sp)}"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.read_secret_version(
                path=sp, mount_point=self.mount, raise_on_deleted_version=False))
        except hx.InvalidPath as err:
            self._raise_if_no_mount(err, what)
            return None, 0
        data = (resp or {}).get("data") or {}
        version = int((data.get("metadata") or {}).get("version") or 0)
        if data.get("data") is None:  # latest state version deleted in KV by someone: treat as absent
            return None, version
        return _State.from_data(self._where(sp), data["data"]), version

    @contextmanager
    def read_scope(self) -> Iterator[None]:
        """One consistent view for one lookup: inside the block each state record is fetched once.

        A lookup asks "is it held?" (``resolve``), then the broker resolves again and
        reads the value; without the scope that is the same state record fetched two
        or three times. Writes never use the memo, and drop what they change. The
        scope is a context variable: per thread and per task, never shared.
        """
        token = _read_scope.set({})
        try:
            yield
        finally:
            _read_scope.reset(token)

    def _read_state_for_read(self, path: SecretPath) -> tuple[_State | None, int]:
        memo = _read_scope.get()
        if memo is None:
            return self._read_state(path)
        key = (id(self), str(path))
        if key not in memo:
            memo[key] = self._read_state(path)
        return memo[key]

    def _forget_read(self, path: SecretPath) -> None:
        memo = _read_scope.get()
        if memo is not None:
            memo.pop((id(self), str(path)), None)

    def _write_state(self, path: SecretPath, state: _State, cas: int) -> bool:
        """Commit a state record with check-and-set; False when another writer got there first."""
        import hvac.exceptions as hx

        self._forget_read(path)

        sp = self._state_path(path)
        what = f"writing {self._where(sp)}"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=sp, secret=state.to_data(), cas=cas, mount_point=self.mount))
        except hx.InvalidRequest as err:
            if self._is_cas_error(err):
                return False
            raise self._unexpected(what, err) from None
        except hx.InvalidPath:
            raise self._no_kv2(what) from None
        self._require_kv2_answer(resp, what)
        return True

    def _value_meta(self, path: SecretPath) -> dict[str, Any]:
        """The value path's KV metadata (``{}`` when it does not exist)."""
        import hvac.exceptions as hx

        vp = self._value_path(path)
        what = f"reading metadata of {self._where(vp)}"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.read_secret_metadata(path=vp, mount_point=self.mount))
        except hx.InvalidPath as err:
            self._raise_if_no_mount(err, what)
            return {}
        return (resp or {}).get("data") or {}

    def _write_value(self, path: SecretPath, value: SecretValue, cas: int) -> bool:
        import hvac.exceptions as hx

        vp = self._value_path(path)
        what = f"writing {self._where(vp)}"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=vp, secret={"value": value}, cas=cas, mount_point=self.mount))
        except hx.InvalidRequest as err:
            if self._is_cas_error(err):
                return False
            raise self._unexpected(what, err) from None
        except hx.InvalidPath:
            raise self._no_kv2(what) from None
        self._require_kv2_answer(resp, what)
        return True

    def _retire(self, path: SecretPath, version: int) -> None:
        """Soft-delete a version that lost its race, so nothing can read it by number."""
        self._forget_values(path, version)
        vp = self._value_path(path)
        try:
            self._call(f"retiring version {version} of {self._where(vp)}", lambda c: c.secrets.kv.v2.delete_secret_versions(
                path=vp, versions=[version], mount_point=self.mount))
        except Exception as err:  # noqa: BLE001 - best effort; the state record is what readers trust
            log.warning("could not soft-delete unlabelled version %s of %s: %s", version, path,
                        err if isinstance(err, RunleaseError) else type(err).__name__)

    def _mirror(self, path: SecretPath, state: _State, state_version: int, meta: dict[str, Any] | None = None) -> None:
        """Copy the stage labels into the value's custom_metadata (for humans; best effort)."""
        vp = self._value_path(path)
        try:
            if meta is None:
                meta = self._value_meta(path)
            custom = {k: v for k, v in (meta.get("custom_metadata") or {}).items() if not k.startswith(MIRROR_PREFIX)}
            custom.update({f"{MIRROR_PREFIX}stage-{s}": str(v) for s, v in sorted(state.stages.items())})
            custom[f"{MIRROR_PREFIX}state-version"] = str(state_version)
            if state.deleted_at:
                custom[f"{MIRROR_PREFIX}deleted-at"] = state.deleted_at
            url = f"/v1/{self.mount}/metadata/{vp}"
            self._call(f"writing metadata of {self._where(vp)}", lambda c: c.adapter.post(
                url, json={"custom_metadata": custom, "cas_required": True}))
        except Exception as err:  # noqa: BLE001 - best effort, for humans only; runlease never reads it
            log.warning("could not mirror the stages of %s into custom_metadata: %s", path,
                        err if isinstance(err, RunleaseError) else type(err).__name__)

    # -- state transitions ------------------------------------------------------

    @staticmethod
    def _now() -> str:
        return utcnow().isoformat()

    def _live(self, path: SecretPath, state: _State | None) -> _State:
        if state is None or state.deleted_at is not None:
            raise SecretNotFoundError(f"secret {path} not found")
        return state

    def _mutate(self, path: SecretPath, change: Callable[[_State], None]) -> _State:
        """Apply ``change`` to the live state record under check-and-set, retrying lost rounds."""
        for _ in range(MAX_CAS_ATTEMPTS):
            state, sv = self._read_state(path)
            new = copy.deepcopy(self._live(path, state))
            change(new)
            new.updated_at = self._now()
            if self._write_state(path, new, cas=sv):
                self._mirror(path, new, sv + 1)
                return new
        raise ConflictError(f"{path} kept changing under concurrent writers; gave up after {MAX_CAS_ATTEMPTS} rounds")

    def _staged(self, path: SecretPath, state: _State | None, version: int, stage: Stage,
                cas: int | None) -> _State:
        """The state after putting ``version`` with ``stage`` (raises ConflictError if ``cas`` fails)."""
        live = state is not None and state.deleted_at is None
        actual = state.stages.get(Stage.CURRENT.value, 0) if (live and state is not None) else 0
        if cas is not None and cas != actual:
            raise ConflictError(f"check-and-set failed for {path}: expected CURRENT v{cas}, found v{actual}")
        now = self._now()
        new = copy.deepcopy(state) if state is not None else _State(created_at=now)
        if not live:
            # Reviving a deleted secret starts afresh: labels from before the delete must not
            # make its old versions leasable (or a deleted API key verifiable) again.
            new.stages = {}
        new.last_version = max(version, new.last_version)
        new.deleted_at = None
        new.updated_at = now
        if stage is Stage.CURRENT and actual:
            new.stages[Stage.PREVIOUS.value] = actual
        new.stages[stage.value] = version
        return new

    # -- SecretStore: writes -------------------------------------------------------

    def put(self, path: SecretPath, value: SecretValue, *, cas: int | None = None, stage: Stage = Stage.CURRENT) -> int:
        check_value(path, value)
        encode_json(path, value)  # refuse what JSON cannot carry before anything is written
        for _ in range(MAX_CAS_ATTEMPTS):
            state, sv = self._read_state(path)
            if state is None and self._airflow(path, state) is not None:
                # Its version numbers would collide with the ones a runlease record starts at.
                raise ConflictError(
                    f"{path} is served read-only from Airflow's VaultBackend layout (store option airflow_layout); "
                    "runlease does not write there and will not shadow it: delete it there first, or turn the "
                    "option off to keep it only in runlease's layout"
                )
            self._staged(path, state, 0, stage, cas)  # fail a stale cas before writing anything
            meta = self._value_meta(path)
            version = int(meta.get("current_version") or 0) + 1
            if not self._write_value(path, value, cas=version - 1):
                continue  # another writer took this version number; start over
            for _ in range(MAX_CAS_ATTEMPTS):
                try:
                    new = self._staged(path, state, version, stage, cas)
                except ConflictError:
                    self._retire(path, version)
                    raise
                if self._write_state(path, new, cas=sv):
                    meta.setdefault("custom_metadata", {})
                    self._mirror(path, new, sv + 1, meta)
                    return version
                state, sv = self._read_state(path)
                if state is not None and state.last_version >= version:
                    self._retire(path, version)  # a newer version was committed first: renumber
                    break
            else:
                self._retire(path, version)
                break
        raise ConflictError(f"{path} kept changing under concurrent writers; gave up after {MAX_CAS_ATTEMPTS} rounds")

    def move_stage(self, path: SecretPath, stage: Stage, version: int | None, *, expected: int | None = None) -> None:
        if version is not None:
            self._require_version(path, version)

        def change(state: _State) -> None:
            if version is not None and not 1 <= version <= state.last_version:
                raise SecretNotFoundError(f"secret {path} has no version {version}")
            holder = state.stages.get(stage.value)
            if expected is not None and holder != expected:
                raise ConflictError(f"stage {stage.value} of {path} moved: expected v{expected}, found {holder}")
            if version is None:
                state.stages.pop(stage.value, None)
            else:
                state.stages[stage.value] = version

        self._mutate(path, change)

    def _require_version(self, path: SecretPath, version: int) -> None:
        versions = self._value_meta(path).get("versions") or {}
        entry = versions.get(str(version))
        if not entry or entry.get("deletion_time") or entry.get("destroyed"):
            raise SecretNotFoundError(f"secret {path} has no version {version}")

    def delete(self, path: SecretPath) -> None:
        def change(state: _State) -> None:
            state.deleted_at = self._now()

        self._forget_values(path)
        self._mutate(path, change)

    def update_metadata(
        self, path: SecretPath, patch: dict[str, Any], *, expected: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        # ``change`` runs on the state record just read, and the write is a KV
        # check-and-set on that record's version: the comparison is exact.
        def change(state: _State) -> None:
            stale = metadata_conflicts(state.metadata, expected)
            if stale:
                raise ConflictError(f"metadata of {path} changed: {', '.join(stale)} no longer as expected")
            state.metadata.update(patch)

        return dict(self._mutate(path, change).metadata)

    # -- SecretStore: reads ----------------------------------------------------------

    # -- Airflow's VaultBackend layout (opt-in, read-only) ------------------------------

    def _airflow(self, path: SecretPath, state: _State | None, version: int | None = None,
                 stage: Stage | None = Stage.CURRENT, *, decode: bool = False) -> tuple[int, Any, dict[str, Any]] | None:
        """The Airflow-layout secret for ``path`` when runlease has no record of its own."""
        layout = self.options.airflow_layout
        if layout is None or state is not None:
            return None
        kv_path = layout.kv_path(path)
        if kv_path is None or (version is None and stage not in (None, Stage.CURRENT)):
            return None
        entry = read_entry(layout, kv_path, self._call, version)
        if entry is None:
            return None
        number, data, meta = entry
        return number, to_value(path, number, f"Vault {layout.mount}/{kv_path}", data) if decode else None, meta

    def resolve(self, path: SecretPath, stage: Stage = Stage.CURRENT) -> Resolved:
        state = self._read_state_for_read(path)[0]
        if self.options.airflow_layout is not None and state is None:
            found = self._airflow(path, state, stage=stage)
            if found is not None:
                return Resolved(version=found[0], metadata={})
        state = self._live(path, state)
        version = state.stages.get(stage.value)
        if version is None:
            raise SecretNotFoundError(f"secret {path} has no {stage.value} version")
        return Resolved(version=version, metadata=dict(state.metadata))

    def get(self, path: SecretPath, *, version: int | None = None, stage: Stage | None = Stage.CURRENT) -> StoredSecret:
        """The value at ``version``, or at the version ``stage`` points to -- in one round trip when uncached.

        The state record says which version a stage points to; without it in hand
        (this lookup's read scope has not fetched it, see :meth:`read_scope`) the
        value is read *at the same time* -- the asked ``version``, or else the
        latest one, which is what CURRENT (or a PENDING not yet promoted) points
        to unless a stage was moved back. The state record stays authoritative:
        the speculative answer is used only if it is the version the state record
        names and Vault served it live (not deleted, not destroyed); otherwise the
        named version is read as before. So a lookup costs the time of one request
        instead of two, and never returns anything the sequential reads would not.
        Versions already read are remembered by number (they are immutable), so a
        later lookup of an unchanged secret reads the state record only.
        """
        memo = _read_scope.get()
        in_hand = memo is not None and (id(self), str(path)) in memo
        guess: Future[tuple[int, dict[str, Any]] | None] | None = None
        if not in_hand and self._worth_guessing(path, version):
            # The arguments are bound now: ``version`` is reassigned below, and a closure read late on the
            # reader thread would fetch the version the state record named instead of the guess.
            guess = _speculate(self._read_live_version, path, version)
        state = self._read_state_for_read(path)[0]
        if self.options.airflow_layout is not None and state is None:
            found = self._airflow(path, state, version, stage, decode=True)
            if found is not None:
                return StoredSecret(path=path, version=found[0], value=found[1], metadata={})
        state = self._live(path, state)
        if version is None:
            label = (stage or Stage.CURRENT).value
            if label not in state.stages:
                raise SecretNotFoundError(f"secret {path} has no {label} version")
            version = state.stages[label]
        n = version
        value = self._remembered(path, n)
        if value is _NOTHING and guess is not None:
            answer = guess.result()
            if answer is not None and answer[0] == n:
                self.speculation_hits += 1
                value = self._decode(path, n, answer[1])
            else:
                self.speculation_misses += 1
        if value is _NOTHING:
            value = self._decode(path, n, self._read_version(path, n))
        self._remember(path, n, value)
        return StoredSecret(path=path, version=n, value=value, metadata=dict(state.metadata))

    # -- value reads and the versions remembered ------------------------------------------

    def _worth_guessing(self, path: SecretPath, version: int | None) -> bool:
        """Read the value alongside the state record unless what it would fetch is likely in hand already."""
        if not self.options.concurrent_reads:
            return False
        with self._values_lock:
            if version is not None:
                return (str(path), version) not in self._values
            return str(path) not in self._paths_remembered

    def _read_live_version(self, path: SecretPath, version: int | None) -> tuple[int, dict[str, Any]] | None:
        """``(number, KV data)`` of ``version`` (None: the latest) if Vault serves it live; else None.

        Runs beside the state read, so it never raises: whatever went wrong
        (absent, deleted, destroyed, denied, unreachable) the caller reads the
        version the state record names the ordinary way, and reports that.
        """
        vp = self._value_path(path)
        what = f"reading {'the latest version' if version is None else f'version {version}'} of {self._where(vp)}"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.read_secret_version(
                path=vp, version=version, mount_point=self.mount, raise_on_deleted_version=False))
        except Exception:  # noqa: BLE001 - the authoritative path reports it
            return None
        body = (resp or {}).get("data") or {}
        meta = body.get("metadata") or {}
        data = body.get("data")
        try:
            number = int(meta.get("version") or 0)
        except (TypeError, ValueError):
            return None
        if not isinstance(data, dict) or meta.get("deletion_time") or meta.get("destroyed") or number < 1:
            return None
        return number, data

    def _read_version(self, path: SecretPath, n: int) -> Any:
        """The KV data map of version ``n`` (SecretNotFoundError if deleted, destroyed or never written)."""
        import hvac.exceptions as hx

        vp = self._value_path(path)
        what = f"reading version {n} of {self._where(vp)}"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.read_secret_version(
                path=vp, version=n, mount_point=self.mount, raise_on_deleted_version=True))
        except hx.InvalidPath as err:
            self._raise_if_no_mount(err, what)
            raise SecretNotFoundError(
                f"secret {path} has no version {n} in {self._where(vp)} (never written, deleted, destroyed, "
                "or pruned by max_versions)"
            ) from None
        return ((resp or {}).get("data") or {}).get("data")

    def _decode(self, path: SecretPath, n: int, data: Any) -> SecretValue:
        where = self._where(self._value_path(path))
        if not isinstance(data, dict) or "value" not in data:
            raise malformed(path, n, where, "expected a KV data map with a 'value' field")
        return decoded(path, n, where, data["value"])

    def _remembered(self, path: SecretPath, n: int) -> Any:
        with self._values_lock:
            key = (str(path), n)
            if key not in self._values:
                return _NOTHING
            self._values.move_to_end(key)
            return self._values[key]

    def _remember(self, path: SecretPath, n: int, value: SecretValue) -> None:
        with self._values_lock:
            key = (str(path), n)
            if key not in self._values:
                self._paths_remembered[key[0]] = self._paths_remembered.get(key[0], 0) + 1
            self._values[key] = value
            while len(self._values) > MAX_REMEMBERED_VERSIONS:
                self._unremember(self._values.popitem(last=False)[0])

    def _unremember(self, key: tuple[str, int]) -> None:
        left = self._paths_remembered.get(key[0], 0) - 1
        if left > 0:
            self._paths_remembered[key[0]] = left
        else:
            self._paths_remembered.pop(key[0], None)

    def _forget_values(self, path: SecretPath, version: int | None = None) -> None:
        """Drop remembered plaintext of ``path`` (one version, or all: after a delete)."""
        key = str(path)
        with self._values_lock:
            for k in [k for k in self._values if k[0] == key and version in (None, k[1])]:
                del self._values[k]
                self._unremember(k)

    def _info(self, path: SecretPath, state: _State) -> SecretInfo:
        return SecretInfo(
            path=path,
            stages={Stage(k): v for k, v in state.stages.items()},
            versions=state.last_version,
            created_at=parse_time(state.created_at),
            updated_at=parse_time(state.updated_at),
            deleted=state.deleted_at is not None,
            metadata=dict(state.metadata),
        )

    def info(self, path: SecretPath) -> SecretInfo:
        state = self._read_state(path)[0]
        if state is None and self.options.airflow_layout is not None:
            found = self._airflow(path, state)
            if found is not None:
                when = parse_time(found[2].get("created_time"))
                return SecretInfo(path=path, stages={Stage.CURRENT: found[0]}, versions=found[0],
                                  created_at=when, updated_at=when, metadata={})
        if state is None:
            raise SecretNotFoundError(f"secret {path} not found")
        return self._info(path, state)

    def _list_dir(self, kv_dir: str) -> list[str]:
        import hvac.exceptions as hx

        what = f"listing {self._where(kv_dir)}/"
        try:
            resp = self._call(what, lambda c: c.secrets.kv.v2.list_secrets(path=kv_dir, mount_point=self.mount))
        except hx.InvalidPath as err:
            self._raise_if_no_mount(err, what)
            return []
        return [str(k) for k in ((resp or {}).get("data") or {}).get("keys") or []]

    def list(self, prefix: str = "", *, include_deleted: bool = False) -> list[SecretInfo]:
        root = self._join(STATE_DIR)

        def reachable(partial: str) -> bool:
            return partial.startswith(prefix) or prefix.startswith(partial)

        out: list[SecretInfo] = []
        for env in self._list_dir(root):
            if not env.endswith("/") or not reachable(env):
                continue
            for kind in self._list_dir(f"{root}/{env.rstrip('/')}"):
                if not kind.endswith("/") or not reachable(env + kind):
                    continue
                for name in self._list_dir(f"{root}/{env}{kind.rstrip('/')}"):
                    text = env + kind + name
                    if name.endswith("/") or not text.startswith(prefix):
                        continue
                    try:
                        path = SecretPath.parse(text)
                    except InvalidPathError:
                        continue  # not a runlease secret
                    state = self._read_state(path)[0]
                    if state is None or (state.deleted_at is not None and not include_deleted):
                        continue
                    out.append(self._info(path, state))
        out.extend(self._list_airflow(prefix, {str(i.path) for i in out}))
        return sorted(out, key=lambda i: str(i.path))

    def _list_airflow(self, prefix: str, known: set[str]) -> list[SecretInfo]:
        """Airflow-layout secrets under ``prefix`` that runlease has no record of (see vault_airflow)."""
        layout = self.options.airflow_layout
        if layout is None:
            return []
        out = []
        for kind in ("connections", "variables", "config"):
            base = layout.kv_path(SecretPath.parse(f"{layout.env}/{kind}/x"))
            head = f"{layout.env}/{kind}/"
            if base is None or not (head.startswith(prefix) or prefix.startswith(head)):
                continue
            for name in list_keys(layout, base.rpartition("/")[0], self._call) or []:
                text = head + name
                if name.endswith("/") or text in known or not text.startswith(prefix):
                    continue
                try:
                    out.append(self.info(SecretPath.parse(text)))
                except (InvalidPathError, SecretNotFoundError):
                    continue
        return out

    def history(self, path: SecretPath) -> list[SecretVersion]:
        state = self._read_state(path)[0]
        if state is None and self.options.airflow_layout is not None:
            found = self._airflow(path, state)
            if found is not None:
                return [SecretVersion(path=path, version=found[0], created_at=parse_time(found[2].get("created_time")),
                                      stages=[Stage.CURRENT])]
        if state is None:
            raise SecretNotFoundError(f"secret {path} not found")
        labels: dict[int, list[Stage]] = {}
        for stage, version in state.stages.items():
            labels.setdefault(version, []).append(Stage(stage))
        versions = self._value_meta(path).get("versions") or {}
        out = []
        for key, entry in versions.items():
            n = int(key)
            out.append(SecretVersion(
                path=path, version=n, created_at=parse_time(entry.get("created_time")),
                stages=sorted(labels.get(n, [])),
                deprecated=bool(entry.get("deletion_time") or entry.get("destroyed")),
            ))
        return sorted(out, key=lambda v: v.version)

    # -- operations ---------------------------------------------------------------

    def check(self) -> str:
        """Prove address, auth, the mount and the policy before `init` writes anything.

        The mount must be KV version 2: on KV v1 every write would overwrite the
        last one, without versions or check-and-set, and a missing mount would
        only show up at the first ``put``. ``sys/internal/ui/mounts/<mount>`` tells
        the engine type and version to any token with access under the mount.
        """
        import hvac.exceptions as hx

        what = f"reading the mount {self.mount!r}"
        try:
            resp = self._call(what, lambda c: c.adapter.get(f"/v1/sys/internal/ui/mounts/{self.mount}"))
        except (hx.InvalidPath, hx.InvalidRequest):
            raise self._no_kv2(what) from None
        except StoreAccessDeniedError:
            raise StoreUnavailableError(
                f"{self.session.describe()}: no secrets engine at {self.mount!r} that runlease's token can see "
                f"(missing, or the policy grants nothing under {self.mount}/); runlease needs a KV v2 mount there"
            ) from None
        data = (resp or {}).get("data") or {}
        kind, version = data.get("type"), str((data.get("options") or {}).get("version") or "1")
        if kind not in ("kv", "generic") or version != "2":
            described = f"KV version {version}" if kind in ("kv", "generic") else f"a {kind!r} secrets engine"
            raise StoreUnavailableError(
                f"{self.session.describe()}: the mount {self.mount!r} is {described}; runlease needs KV version 2 "
                f"(versions and check-and-set): `vault kv enable-versioning {self.mount}` or another mount"
            )
        self._list_dir(self._join(STATE_DIR))
        return self.location
