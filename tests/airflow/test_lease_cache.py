"""The worker-side lease cache against a real local store and ledger (no Airflow needed)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from runlease.models import LeaseState, RunIdentity, SecretPath
from runlease.runtime import Runtime, init_home
from runlease.settings import Settings

from runlease_airflow.lease_cache import EXPIRY_MARGIN, LeaseCache, task_key

ADMIN = RunIdentity(orchestrator="cli", pipeline="tests")
TRY_1 = RunIdentity(orchestrator="airflow", pipeline="dag", run_id="r1", task_id="t", try_number=1)
TRY_2 = TRY_1.model_copy(update={"try_number": 2})
PATH = SecretPath.parse("dev/variables/token")


@pytest.fixture()
def runtime(tmp_path: Path) -> Runtime:
    rt, _ = init_home(Settings(home=tmp_path / "home"))
    rt.broker.put(PATH, "token-value-one", ADMIN)
    yield rt
    rt.close()


def lookup(cache: LeaseCache, runtime: Runtime, identity: RunIdentity, revalidate: float = 0.0):
    broker = runtime.broker
    return cache.get(identity, PATH, revalidate_seconds=revalidate,
                     current_version=lambda p: broker.store.resolve(p).version,
                     lease_state=lambda lease_id: broker.ledger.get_lease(lease_id).state)


def test_hit_for_the_same_try_miss_for_another(runtime: Runtime) -> None:
    cache = LeaseCache()
    lease = runtime.broker.lease(PATH, TRY_1, ttl=600)
    cache.put(lease)
    assert lookup(cache, runtime, TRY_1).lease_id == lease.lease_id
    assert lookup(cache, runtime, TRY_2) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_moved_current_version_is_a_miss(runtime: Runtime) -> None:
    cache = LeaseCache()
    cache.put(runtime.broker.lease(PATH, TRY_1, ttl=600))
    runtime.broker.put(PATH, "token-value-two", ADMIN)
    assert lookup(cache, runtime, TRY_1) is None
    assert len(cache) == 0


def test_revoked_lease_is_a_miss(runtime: Runtime) -> None:
    cache = LeaseCache()
    lease = runtime.broker.lease(PATH, TRY_1, ttl=600)
    cache.put(lease)
    runtime.broker.revoke(lease.lease_id)
    assert runtime.broker.ledger.get_lease(lease.lease_id).state is LeaseState.REVOKED
    assert lookup(cache, runtime, TRY_1) is None


def test_deleted_secret_drops_the_entry_and_raises(runtime: Runtime) -> None:
    from runlease.errors import SecretNotFoundError

    cache = LeaseCache()
    cache.put(runtime.broker.lease(PATH, TRY_1, ttl=600))
    runtime.broker.delete(PATH, ADMIN)
    with pytest.raises(SecretNotFoundError):
        lookup(cache, runtime, TRY_1)
    assert len(cache) == 0


def test_lease_close_to_expiry_is_not_served(runtime: Runtime) -> None:
    cache = LeaseCache()
    short = EXPIRY_MARGIN.total_seconds() - 1
    cache.put(runtime.broker.lease(PATH, TRY_1, ttl=short))
    assert lookup(cache, runtime, TRY_1) is None


def test_revalidation_interval_skips_the_store_between_checks(runtime: Runtime) -> None:
    cache = LeaseCache()
    cache.put(runtime.broker.lease(PATH, TRY_1, ttl=600))
    runtime.broker.put(PATH, "token-value-two", ADMIN)
    # Within the interval the cached (now PREVIOUS) version is still served: it stays
    # valid for the rotation grace period, which is why a non-zero interval is safe.
    assert lookup(cache, runtime, TRY_1, revalidate=3600) is not None
    assert lookup(cache, runtime, TRY_1, revalidate=0) is None


def test_drop_task_and_drop_run(runtime: Runtime) -> None:
    cache = LeaseCache()
    cache.put(runtime.broker.lease(PATH, TRY_1, ttl=600))
    cache.put(runtime.broker.lease(PATH, TRY_2, ttl=600))
    assert cache.drop_task(task_key(TRY_1)) == 1
    assert lookup(cache, runtime, TRY_2) is not None
    assert cache.drop_run("dag", "r1") == 1
    assert len(cache) == 0


def test_bounded_size_evicts_the_least_recently_used(runtime: Runtime) -> None:
    cache = LeaseCache(max_entries=2)
    tries = [TRY_1.model_copy(update={"try_number": n}) for n in (1, 2, 3)]
    for identity in tries:
        cache.put(runtime.broker.lease(PATH, identity, ttl=timedelta(minutes=10)))
    assert len(cache) == 2
    assert lookup(cache, runtime, tries[0]) is None
    assert lookup(cache, runtime, tries[2]) is not None
