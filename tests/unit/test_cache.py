"""The broker's cache must never serve a value after its stage moved elsewhere."""

from __future__ import annotations

import textwrap

import pytest
from support.core import conn, run_python

from runlease.errors import SecretNotFoundError
from runlease.models import RunIdentity, SecretPath, Stage
from runlease.runtime import Runtime

P = SecretPath.parse("dev/connections/warehouse")


def lease_password(runtime: Runtime, identity: RunIdentity) -> str:
    return runtime.broker.lease(P, identity).value["password"]


def other_process(runtime: Runtime, body: str) -> None:
    code = textwrap.dedent(
        """
        from runlease.runtime import open_runtime
        from runlease.models import SecretPath, Stage
        rt = open_runtime()
        P = SecretPath.parse("dev/connections/warehouse")
        """
    ) + textwrap.dedent(body) + "\nrt.close()\n"
    result = run_python(code, env={"RUNLEASE_HOME": str(runtime.settings.home)})
    assert result.returncode == 0, result.stderr


def test_hits_counted_when_nothing_moved(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    cache = runtime.broker.cache
    h0, m0 = cache.hits, cache.misses
    for _ in range(10):
        assert lease_password(runtime, identity) == "pw-v1"
    assert cache.misses - m0 == 1
    assert cache.hits - h0 == 9


def test_new_current_written_in_this_process_is_served(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    assert lease_password(runtime, identity) == "pw-v1"
    assert lease_password(runtime, identity) == "pw-v1"  # now cached
    runtime.store.put(P, conn("pw-v2"))  # straight to the store, behind the broker's back
    lease = runtime.broker.lease(P, identity)
    assert lease.version == 2 and lease.value["password"] == "pw-v2"


def test_stage_moved_by_another_process_is_served(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    runtime.broker.put(P, conn("pw-v2"), identity, stage=Stage.PENDING)
    for _ in range(3):
        assert lease_password(runtime, identity) == "pw-v1"
    hits = runtime.broker.cache.hits

    # Rotation's finish step, run by another process with its own runtime.
    other_process(runtime, """
        rt.store.move_stage(P, Stage.PREVIOUS, 1)
        rt.store.move_stage(P, Stage.CURRENT, 2, expected=1)
        rt.store.move_stage(P, Stage.PENDING, None, expected=2)
    """)
    lease = runtime.broker.lease(P, identity)
    assert (lease.version, lease.value["password"]) == (2, "pw-v2")
    assert runtime.broker.cache.hits == hits  # a miss: v2 was never cached

    # Rolling back to the cached v1 serves v1 again (versions are immutable, so that entry is right).
    other_process(runtime, "rt.store.move_stage(P, Stage.CURRENT, 1, expected=2)")
    assert lease_password(runtime, identity) == "pw-v1"
    assert runtime.broker.cache.hits == hits + 1


def test_new_version_written_by_another_process_is_served(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    assert lease_password(runtime, identity) == "pw-v1"
    other_process(runtime, """
        rt.store.put(P, {"conn_type": "postgres", "host": "db", "login": "etl", "password": "pw-from-elsewhere",
                         "schema": None, "port": None, "extra": {}}, cas=1)
    """)
    assert lease_password(runtime, identity) == "pw-from-elsewhere"
    assert runtime.broker.lease(P, identity, stage=Stage.PREVIOUS).value["password"] == "pw-v1"


def test_deleted_elsewhere_is_not_served_from_cache(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    assert lease_password(runtime, identity) == "pw-v1"
    other_process(runtime, "rt.store.delete(P)")
    with pytest.raises(SecretNotFoundError):
        runtime.broker.lease(P, identity)


def test_metadata_change_elsewhere_is_seen(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    runtime.broker.lease(P, identity)
    other_process(runtime, 'rt.store.update_metadata(P, {"owner": "team-b"})')
    assert runtime.broker.cache.get(P).metadata == {"owner": "team-b"}


def test_broker_delete_forgets_plaintext(runtime: Runtime, identity: RunIdentity) -> None:
    runtime.broker.put(P, conn("pw-v1"), identity)
    runtime.broker.lease(P, identity)
    assert any(k[0] == str(P) for k in runtime.broker.cache._entries)
    runtime.broker.delete(P, identity)
    assert not any(k[0] == str(P) for k in runtime.broker.cache._entries)


def test_cache_is_bounded(runtime: Runtime, identity: RunIdentity) -> None:
    cache = runtime.broker.cache
    cache.max_entries = 3
    for i in range(5):
        runtime.broker.put(f"dev/variables/v{i}", f"value-{i:05d}", identity)
        runtime.broker.lease(f"dev/variables/v{i}", identity)
    assert len(cache._entries) == 3
