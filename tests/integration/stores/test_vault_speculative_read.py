"""The Vault store's one-round-trip read, on a real OpenBao: right version, request counts, consistency.

An uncached ``get`` reads the state record and (on a reader thread) the value's
latest version at the same time, and uses the latter only if it is the version
the state record names and Vault served it live. Requests are counted from the
server's own audit log.

Faults a real server cannot be made to produce, done with pytest-mock: a reader
thread scheduled only after the state record was read (``_LateReader``), and
a spy on the reader-thread call to see which thread ran it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from runlease.audit import correlation
from runlease.errors import SecretNotFoundError
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.store.vault import VaultOptions, VaultStore
from store_support import vault_options
from support.openbao import OpenBao

P = SecretPath.parse("dev/connections/warehouse")
V1 = {"conn_type": "postgres", "host": "db", "password": "spec-v1-Pa55"}  # runlease: allow secret-assignment (test fixture)
V2 = {"conn_type": "postgres", "host": "db", "password": "spec-v2-Pa55"}  # runlease: allow secret-assignment (test fixture)


def fresh(store: VaultStore) -> VaultStore:
    """Another store on the same prefix and session, with nothing remembered (as in a new process)."""
    return VaultStore(VaultOptions.model_validate(store.options.model_dump()), session=store.session)


def kv_reads(bao: OpenBao, mark: int, store: VaultStore) -> list[str]:
    """The KV data paths read since ``mark`` (state records show as ``_state/...``); ``@v``: a version was asked
    (the audit log HMACs its number), none: the latest."""
    out = []
    for r in bao.requests(mark, path_contains=f"/data/{store.prefix}/"):
        if r.get("operation") != "read":
            continue
        version = (r.get("data") or {}).get("version") or ""
        out.append(r["path"].split(f"/data/{store.prefix}/", 1)[1] + ("@v" if version else ""))
    return out


@pytest.fixture
def store(openbao: OpenBao, tmp_path: Path) -> VaultStore:
    return VaultStore.from_options(vault_options(openbao, tmp_path))


def test_uncached_read_is_two_concurrent_requests_then_one(openbao: OpenBao, store: VaultStore) -> None:
    store.put(P, V1)
    reader = fresh(store)
    mark = openbao.audit_mark()
    assert reader.get(P).value == V1
    assert sorted(kv_reads(openbao, mark, reader)) == [f"_state/{P}", str(P)]  # state + latest, nothing more
    assert (reader.speculation_hits, reader.speculation_misses) == (1, 0)
    mark = openbao.audit_mark()
    assert reader.get(P).value == V1  # the version is remembered: only the state record is read
    assert kv_reads(openbao, mark, reader) == [f"_state/{P}"]


def test_current_behind_latest_serves_current(openbao: OpenBao, store: VaultStore) -> None:
    """PENDING written but not promoted: the latest KV version is not CURRENT's; CURRENT is served."""
    store.put(P, V1)
    store.put(P, V2, stage=Stage.PENDING)
    reader = fresh(store)
    mark = openbao.audit_mark()
    got = reader.get(P)
    assert (got.version, got.value) == (1, V1)
    assert (reader.speculation_hits, reader.speculation_misses) == (0, 1)
    assert sorted(kv_reads(openbao, mark, reader)) == [f"_state/{P}", str(P), f"{P}@v"]
    pending = fresh(store).get(P, stage=Stage.PENDING)  # the latest *is* PENDING: one round trip
    assert (pending.version, pending.value) == (2, V2)


def test_current_moved_back_serves_the_named_version(openbao: OpenBao, store: VaultStore) -> None:
    store.put(P, V1)
    store.put(P, V2)
    store.move_stage(P, Stage.CURRENT, 1, expected=2)  # a rollback: CURRENT behind the latest
    reader = fresh(store)
    got = reader.get(P)
    assert (got.version, got.value, reader.speculation_hits, reader.speculation_misses) == (1, V1, 0, 1)


class _LateReader:
    """A reader pool whose thread starts only when its answer is awaited (pytest-mock fault: a real thread
    pool cannot be told to be scheduled late). The guess must still be the latest version, not whatever
    ``get`` has learnt from the state record by then."""

    def submit(self, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        future: Future[Any] = Future()
        original = future.result

        def result(timeout: float | None = None) -> Any:
            if not future.done():
                future.set_result(fn(*args))
            return original(timeout)

        future.result = result  # type: ignore[method-assign]
        return future


def test_a_late_reader_thread_still_reads_the_guess(openbao: OpenBao, store: VaultStore, mocker: Any) -> None:
    store.put(P, V1)
    store.put(P, V2)
    store.move_stage(P, Stage.CURRENT, 1, expected=2)
    mocker.patch("runlease.store.vault._speculation_pool", return_value=_LateReader())
    reader = fresh(store)
    mark = openbao.audit_mark()
    got = reader.get(P)
    assert (got.version, got.value, reader.speculation_hits, reader.speculation_misses) == (1, V1, 0, 1)
    assert sorted(kv_reads(openbao, mark, reader)) == [f"_state/{P}", str(P), f"{P}@v"]


def test_explicit_version_is_read_beside_the_state_record(openbao: OpenBao, store: VaultStore) -> None:
    store.put(P, V1)
    store.put(P, V2)
    reader = fresh(store)
    mark = openbao.audit_mark()
    assert reader.get(P, version=1).value == V1
    assert sorted(kv_reads(openbao, mark, reader)) == [f"_state/{P}", f"{P}@v"]
    assert reader.speculation_hits == 1


@pytest.mark.parametrize("how", ["deleted", "destroyed"])
def test_a_deleted_or_destroyed_current_is_never_served(openbao: OpenBao, store: VaultStore, how: str) -> None:
    """Vault deleted CURRENT's version behind runlease's back: the speculative answer is not used either."""
    store.put(P, V1)
    store.put(P, V2)
    kv = openbao.client().secrets.kv.v2
    vp = f"{store.prefix}/{P}"
    if how == "deleted":
        kv.delete_secret_versions(path=vp, versions=[2], mount_point=store.mount)
    else:
        kv.destroy_secret_versions(path=vp, versions=[2], mount_point=store.mount)
    reader = fresh(store)
    with pytest.raises(SecretNotFoundError) as caught:
        reader.get(P)
    assert "version 2" in str(caught.value) and "spec-v" not in str(caught.value)
    assert reader.speculation_hits == 0
    assert reader.get(P, version=1).value == V1


def test_a_deleted_secret_is_not_served_from_what_was_remembered(openbao: OpenBao, store: VaultStore) -> None:
    store.put(P, V1)
    assert store.get(P).value == V1
    store.delete(P)
    with pytest.raises(SecretNotFoundError):
        store.get(P)
    assert not store._values  # the plaintext went with the secret


def test_inside_a_read_scope_a_known_state_means_one_request(openbao: OpenBao, store: VaultStore) -> None:
    """The read scope memo still holds: resolve, then get, reads the state record once and the value once."""
    store.put(P, V1)
    reader = fresh(store)
    mark = openbao.audit_mark()
    with reader.read_scope():
        version = reader.resolve(P).version
        assert reader.get(P, version=version).value == V1
        assert reader.get(P).value == V1
    assert sorted(kv_reads(openbao, mark, reader)) == [f"_state/{P}", f"{P}@v"]
    assert reader.speculation_hits == 0  # nothing to guess: the state record was in hand


def test_the_reader_thread_carries_the_lookups_correlation_id(openbao: OpenBao, store: VaultStore,
                                                             mocker: Any) -> None:
    store.put(P, V1)
    reader = fresh(store)
    threads: list[str] = []
    original = VaultStore._read_live_version

    def spy(self: VaultStore, *args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, *args)

    mocker.patch.object(VaultStore, "_read_live_version", spy)
    identity = RunIdentity(orchestrator="airflow", pipeline="etl", run_id="r1", task_id="t", try_number=1)
    mark = openbao.audit_mark()
    with correlation.bound(identity):
        assert reader.get(P).value == V1
    assert threads and all(name.startswith("runlease-vault-read") for name in threads)
    sent = openbao.requests(mark, path_contains=f"/data/{reader.prefix}/")
    assert len(sent) == 2 and {openbao.correlation(r) for r in sent} == {correlation.correlation_id(identity)}


def test_concurrent_lookups_share_one_session_without_errors(openbao: OpenBao, store: VaultStore) -> None:
    """Many threads, each a fresh store on the one session and HTTP pool: every answer right, one token."""
    paths = [SecretPath.parse(f"dev/connections/c{i}") for i in range(6)]
    for i, path in enumerate(paths):
        store.put(path, {**V1, "host": f"h{i}"})
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            reader = fresh(store)
            for _ in range(5):
                assert reader.get(paths[i % len(paths)]).value["host"] == f"h{i % len(paths)}"
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)


def test_concurrent_reads_can_be_turned_off(openbao: OpenBao, tmp_path: Path) -> None:
    store = VaultStore.from_options({**vault_options(openbao, tmp_path), "concurrent_reads": False})
    store.put(P, V1)
    reader = fresh(store)
    mark = openbao.audit_mark()
    assert reader.get(P).value == V1
    assert kv_reads(openbao, mark, reader) == [f"_state/{P}", f"{P}@v"]  # in order, the named version
    assert (reader.speculation_hits, reader.speculation_misses) == (0, 0)


def _child_read(options: dict[str, Any], out: Any) -> None:
    try:
        out.put(VaultStore.from_options(options).get(P).value["password"] == V1["password"])
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        out.put(type(err).__name__)


def test_a_forked_child_gets_its_own_reader_thread(openbao: OpenBao, store: VaultStore) -> None:
    """Airflow's LocalExecutor forks task processes: threads do not survive fork, the pool must not either."""
    import multiprocessing

    store.put(P, V1)
    assert fresh(store).get(P).value == V1  # the parent's reader pool exists and has a thread
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(store.options.model_dump(), out))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join(timeout=10)
        pytest.fail("the forked child hung reading through the parent's reader pool")
    assert out.get(timeout=5) is True
