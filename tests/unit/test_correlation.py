"""Correlation ids: derived from the run identity, bound per context, set by the broker around store calls."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from runlease.audit import correlation
from runlease.broker import Broker
from runlease.keys.crypto import Keyring, new_key
from runlease.clients.db import Database
from runlease.ledger.sqlite import SqliteLedger
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.store.local import LocalStore

A = RunIdentity(orchestrator="airflow", pipeline="etl", run_id="r1", task_id="load", try_number=1)


def test_id_is_stable_short_ascii_and_specific_to_the_try() -> None:
    cid = correlation.correlation_id(A)
    assert cid == correlation.correlation_id(RunIdentity(**A.model_dump()))
    assert cid.startswith("rl-") and len(cid) == 35 and cid.isascii()
    others = {correlation.correlation_id(A.model_copy(update=u)) for u in (
        {"try_number": 2}, {"task_id": "other"}, {"run_id": "r2"}, {"pipeline": "x"}, {"map_index": 0})}
    assert cid not in others and len(others) == 5
    weird = RunIdentity(orchestrator="kfp", pipeline="päipeline\nwith newline", run_id="ü" * 200)
    assert correlation.correlation_id(weird).isascii()


def test_binding_is_scoped_and_per_thread() -> None:
    assert correlation.current() == correlation.process_id()
    seen: list[str] = []
    with correlation.bound(A):
        assert correlation.current() == correlation.correlation_id(A)
        t = threading.Thread(target=lambda: seen.append(correlation.current()))
        t.start()
        t.join()
    assert seen == [correlation.process_id()]  # another thread does not inherit this binding
    assert correlation.current() == correlation.process_id()


class RecordingStore(LocalStore):
    """A LocalStore that notes the correlation id in force at each call."""

    seen: list[tuple[str, str]]

    def resolve(self, path: SecretPath, stage: Stage = Stage.CURRENT):  # type: ignore[override]
        self.seen.append(("resolve", correlation.current()))
        return super().resolve(path, stage)

    def put(self, path, value, *, cas=None, stage=Stage.CURRENT):  # type: ignore[no-untyped-def,override]
        self.seen.append(("put", correlation.current()))
        return super().put(path, value, cas=cas, stage=stage)


def test_broker_binds_the_callers_identity_around_store_calls(tmp_path: Path) -> None:
    keyring = Keyring([new_key()])
    db = Database(tmp_path / "store.db", create=True)
    LocalStore.initialize(db, keyring)
    store = RecordingStore(db, keyring)
    store.seen = []
    broker = Broker(store, SqliteLedger(db, keyring, tmp_path / "anchor"), default_ttl=timedelta(minutes=5))
    admin = RunIdentity(orchestrator="cli", pipeline="ops", task_id="put")
    broker.put("dev/connections/db", {"conn_type": "postgres", "password": "x" * 12}, admin)
    broker.lease("db", A)
    assert store.seen[0] == ("put", correlation.correlation_id(admin))
    assert ("resolve", correlation.correlation_id(A)) in store.seen
    assert correlation.current() == correlation.process_id()
    db.close()
