"""The SecretStore contract: the same tests against local, AWS (moto over HTTP) and Vault (OpenBao; a live Vault if configured).

The local store is the reference: every assertion here is what LocalStore
does, and the remote stores must do exactly the same.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from runlease.errors import ConflictError, InvalidValueError, SecretNotFoundError
from runlease.models import SecretPath, Stage

P = SecretPath.parse("dev/connections/warehouse")
Q = SecretPath.parse("dev/variables/bucket")
CONN = {"conn_type": "postgres", "host": "db.internal", "login": "etl", "password": "S3cret-pa55!",  # runlease: allow secret-assignment (test fixture)
        "port": 5432, "extra": {"sslmode": "require", "options": ["a", "ü"]}}


def stages(store: Any, path: SecretPath = P) -> dict[Stage, int]:
    return dict(store.info(path).stages)


def test_first_put_is_current_and_round_trips(store: Any) -> None:
    assert store.put(P, CONN) == 1
    got = store.get(P)
    assert (got.version, got.value, got.path) == (1, CONN, P)
    assert store.resolve(P).version == 1
    assert stages(store) == {Stage.CURRENT: 1}
    with pytest.raises(SecretNotFoundError, match="no PREVIOUS version"):
        store.resolve(P, Stage.PREVIOUS)
    assert store.put(Q, "s3://models/prod \"quoted\" ünïcode") == 1
    assert store.get(Q).value == "s3://models/prod \"quoted\" ünïcode"


def test_put_current_moves_old_current_to_previous(store: Any) -> None:
    for n in (1, 2, 3):
        assert store.put(P, {**CONN, "password": f"pw-{n}"}) == n
    assert stages(store) == {Stage.CURRENT: 3, Stage.PREVIOUS: 2}
    assert store.get(P, version=1).value["password"] == "pw-1"
    assert store.get(P, stage=Stage.PREVIOUS).version == 2
    info = store.info(P)
    assert info.versions == 3 and not info.deleted


def test_put_pending_only_labels_the_new_version(store: Any) -> None:
    store.put(P, CONN)
    assert store.put(P, {**CONN, "password": "next"}, stage=Stage.PENDING) == 2
    assert stages(store) == {Stage.CURRENT: 1, Stage.PENDING: 2}
    assert store.get(P).version == 1
    assert store.get(P, stage=Stage.PENDING).value["password"] == "next"
    assert store.put(P, {**CONN, "password": "again"}, stage=Stage.PENDING) == 3
    assert stages(store) == {Stage.CURRENT: 1, Stage.PENDING: 3}


def test_pending_only_secret_has_no_current(store: Any) -> None:
    assert store.put(P, CONN, stage=Stage.PENDING) == 1
    assert stages(store) == {Stage.PENDING: 1}
    with pytest.raises(SecretNotFoundError, match="no CURRENT version"):
        store.resolve(P)
    with pytest.raises(SecretNotFoundError):
        store.get(P)
    assert store.get(P, stage=Stage.PENDING).value == CONN
    assert store.put(P, {**CONN, "password": "cur"}, cas=0) == 2
    assert stages(store) == {Stage.CURRENT: 2, Stage.PENDING: 1}


def test_check_and_set_on_put(store: Any) -> None:
    assert store.put(P, CONN, cas=0) == 1
    with pytest.raises(ConflictError, match="expected CURRENT v0, found v1"):
        store.put(P, {**CONN, "password": "lost"}, cas=0)
    assert store.put(P, {**CONN, "password": "two"}, cas=1) == 2
    with pytest.raises(ConflictError, match="expected CURRENT v1, found v2"):
        store.put(P, {**CONN, "password": "stale"}, cas=1)
    with pytest.raises(ConflictError):
        store.put(P, {**CONN, "password": "stale"}, cas=1, stage=Stage.PENDING)
    # a lost check-and-set writes nothing
    assert [v.version for v in store.history(P)] == [1, 2]
    assert store.get(P).value["password"] == "two"
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    assert store.put(P, {**CONN, "password": "staged"}, cas=2, stage=Stage.PENDING) == 3  # runlease: allow secret-assignment (test fixture)
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1, Stage.PENDING: 3}


def test_move_stage_is_compare_and_swap_and_leaves_other_labels(store: Any) -> None:
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"})
    store.move_stage(P, Stage.CURRENT, 1, expected=2)  # roll back
    assert stages(store) == {Stage.CURRENT: 1, Stage.PREVIOUS: 1}
    with pytest.raises(ConflictError, match="expected v2, found 1"):
        store.move_stage(P, Stage.CURRENT, 2, expected=2)
    assert store.resolve(P).version == 1
    store.move_stage(P, Stage.CURRENT, 2)  # unconditional
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    with pytest.raises(ConflictError):
        store.move_stage(P, Stage.PENDING, 2, expected=1)  # PENDING is nowhere
    with pytest.raises(SecretNotFoundError, match="no version 9"):
        store.move_stage(P, Stage.PENDING, 9)
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}


def test_rotation_finish_sequence(store: Any) -> None:
    """create (PENDING) -> finish (PENDING->CURRENT, CURRENT->PREVIOUS) -> retire PREVIOUS."""
    store.put(P, CONN)
    new = store.put(P, {**CONN, "password": "rotated"}, stage=Stage.PENDING, cas=1)  # runlease: allow secret-assignment (test fixture)
    store.move_stage(P, Stage.CURRENT, new, expected=1)
    store.move_stage(P, Stage.PREVIOUS, 1)
    store.move_stage(P, Stage.PENDING, None, expected=new)
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    assert store.get(P).value["password"] == "rotated"
    store.move_stage(P, Stage.PREVIOUS, None, expected=1)
    assert stages(store) == {Stage.CURRENT: 2}
    with pytest.raises(SecretNotFoundError):
        store.resolve(P, Stage.PENDING)


def test_removing_current_leaves_no_current(store: Any) -> None:
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"})
    store.move_stage(P, Stage.CURRENT, None, expected=2)
    assert stages(store) == {Stage.PREVIOUS: 1}
    with pytest.raises(SecretNotFoundError, match="no CURRENT version"):
        store.get(P)
    assert store.put(P, {**CONN, "password": "three"}) == 3  # no CURRENT to demote: PREVIOUS stays
    assert stages(store) == {Stage.CURRENT: 3, Stage.PREVIOUS: 1}
    store.move_stage(P, Stage.CURRENT, 2, expected=3)
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}


def test_soft_delete_keeps_history_and_put_revives(store: Any) -> None:
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"})
    store.update_metadata(P, {"issuer": "static"})
    store.put(Q, "keep")
    store.delete(P)
    for call in (lambda: store.get(P), lambda: store.resolve(P), lambda: store.get(P, version=1),
                 lambda: store.move_stage(P, Stage.CURRENT, 1), lambda: store.update_metadata(P, {"x": "y"}),
                 lambda: store.delete(P)):
        with pytest.raises(SecretNotFoundError):
            call()
    assert store.info(P).deleted
    assert [v.version for v in store.history(P)] == [1, 2]
    assert [str(i.path) for i in store.list("dev/")] == [str(Q)]
    assert [str(i.path) for i in store.list("dev/", include_deleted=True)] == [str(P), str(Q)]
    assert store.put(P, {**CONN, "password": "three"}) == 3
    assert store.get(P).value["password"] == "three"
    assert stages(store) == {Stage.CURRENT: 3}  # revival starts afresh: pre-delete labels are dropped
    assert store.resolve(P).metadata == {"issuer": "static"}
    assert not store.info(P).deleted


def test_metadata_merges_and_travels_with_reads(store: Any) -> None:
    store.put(P, CONN)
    assert store.update_metadata(P, {"issuer": "postgres"}) == {"issuer": "postgres"}
    merged = store.update_metadata(P, {"rotation": {"days": 30, "grace": "1h"}, "owner": "data team: etl/ops"})
    assert merged == {"issuer": "postgres", "rotation": {"days": 30, "grace": "1h"}, "owner": "data team: etl/ops"}
    assert store.resolve(P).metadata == merged
    assert store.get(P).metadata == merged
    assert store.info(P).metadata == merged
    assert store.update_metadata(P, {"issuer": "static"})["issuer"] == "static"


def test_metadata_compare_and_swap(store: Any) -> None:
    """Rotation claims a secret with ``expected``: a stale expectation writes nothing."""
    store.put(P, CONN)
    claim = {"token": "t1", "status": "rotating"}
    assert store.update_metadata(P, {"rotation_state": claim}, expected={"rotation_state": None})["rotation_state"] == claim
    with pytest.raises(ConflictError, match="rotation_state"):
        store.update_metadata(P, {"rotation_state": {"token": "t2"}}, expected={"rotation_state": None})
    with pytest.raises(ConflictError):
        store.update_metadata(P, {"rotation_state": {"token": "t2"}}, expected={"rotation_state": {"token": "t0"}})
    assert store.resolve(P).metadata["rotation_state"] == claim
    done = {"token": "t1", "status": "done"}
    store.update_metadata(P, {"rotation_state": done}, expected={"rotation_state": claim})
    assert store.resolve(P).metadata["rotation_state"] == done


def test_metadata_values_larger_than_one_aws_tag_round_trip(store: Any) -> None:
    """A rotation policy or state is longer than AWS's 256-character tag value; shrinking it leaves no debris."""
    store.put(P, CONN)
    big = {"rotator": "aws-secretsmanager", "settings": {f"k{i}": "v" * 40 for i in range(20)}}
    store.update_metadata(P, {"rotation": big, "issuer": "static"})
    assert store.resolve(P).metadata == {"rotation": big, "issuer": "static"}
    store.update_metadata(P, {"rotation": {"rotator": "token"}}, expected={"rotation": big})
    assert store.resolve(P).metadata == {"rotation": {"rotator": "token"}, "issuer": "static"}
    store.update_metadata(P, {"rotation": big})
    assert store.info(P).metadata["rotation"] == big


def test_resolve_is_authoritative_across_instances(stores: Any) -> None:
    """Two store objects on the same backend: a stage moved through one is seen by the other at once."""
    a, b = stores.make(), stores.make()
    a.put(P, CONN)
    assert b.resolve(P).version == 1
    b.put(P, {**CONN, "password": "two"}, stage=Stage.PENDING)
    b.move_stage(P, Stage.CURRENT, 2, expected=1)
    assert a.resolve(P).version == 2
    assert a.get(P).value["password"] == "two"
    a.delete(P)
    with pytest.raises(SecretNotFoundError):
        b.resolve(P)


def test_list_filters_by_prefix_and_sorts(store: Any) -> None:
    for ref in ("prod/connections/zeta", "dev/variables/bucket", "dev/connections/warehouse", "dev/connections/alpha"):
        store.put(SecretPath.parse(ref), "x" if "variables" in ref else CONN)
    store.move_stage(SecretPath.parse("dev/connections/alpha"), Stage.PENDING, 1)
    assert [str(i.path) for i in store.list()] == [
        "dev/connections/alpha", "dev/connections/warehouse", "dev/variables/bucket", "prod/connections/zeta"]
    assert [str(i.path) for i in store.list("dev/connections/")] == ["dev/connections/alpha", "dev/connections/warehouse"]
    assert [str(i.path) for i in store.list("dev/conn")] == ["dev/connections/alpha", "dev/connections/warehouse"]
    assert [str(i.path) for i in store.list("prod/connections/zeta")] == ["prod/connections/zeta"]
    assert store.list("stage/") == []
    alpha = store.list("dev/connections/alpha")[0]
    assert alpha.stages == {Stage.CURRENT: 1, Stage.PENDING: 1} and alpha.versions == 1


def test_history_lists_versions_with_their_labels(store: Any) -> None:
    store.put(P, CONN)
    store.put(P, {**CONN, "password": "two"})
    store.put(P, {**CONN, "password": "three"}, stage=Stage.PENDING)
    rows = store.history(P)
    assert [(v.version, v.stages) for v in rows] == [
        (1, [Stage.PREVIOUS]), (2, [Stage.CURRENT]), (3, [Stage.PENDING])]
    assert all(v.path == P and v.created_at is not None for v in rows)


def test_missing_secret_is_not_found_everywhere(store: Any) -> None:
    missing = SecretPath.parse("dev/connections/nope")
    for call in (lambda: store.get(missing), lambda: store.resolve(missing), lambda: store.info(missing),
                 lambda: store.history(missing), lambda: store.delete(missing),
                 lambda: store.update_metadata(missing, {"a": "b"}), lambda: store.move_stage(missing, Stage.CURRENT, 1)):
        with pytest.raises(SecretNotFoundError, match="dev/connections/nope"):
            call()
    store.put(P, CONN)
    with pytest.raises(SecretNotFoundError, match="no version 7"):
        store.get(P, version=7)


def test_bad_value_is_refused_before_anything_is_written(store: Any) -> None:
    with pytest.raises(InvalidValueError, match="dev/connections/warehouse"):
        store.put(P, 12345)  # type: ignore[arg-type]
    with pytest.raises(SecretNotFoundError):
        store.info(P)


def test_concurrent_check_and_set_puts_admit_exactly_one(stores: Any) -> None:
    """Two writers with the same expectation: one wins, one gets ConflictError, nothing is lost."""
    if stores.backend == "aws":
        pytest.skip("moto applies UpdateSecretVersionStage without a lock, so it cannot referee this race; "
                    "AWS itself rejects the stale RemoveFromVersionId")
    first = stores.make()
    first.put(P, CONN)
    writers = [stores.make() for _ in range(2)]
    barrier = threading.Barrier(2)
    outcome: dict[int, Any] = {}

    def write(i: int) -> None:
        barrier.wait()
        try:
            outcome[i] = writers[i].put(P, {**CONN, "password": f"w{i}"}, cas=1)
        except ConflictError as err:
            outcome[i] = err

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wins = {i: v for i, v in outcome.items() if isinstance(v, int)}
    assert len(wins) == 1, outcome
    (winner, version), = wins.items()
    assert first.get(P).value["password"] == f"w{winner}"
    assert stages(first) == {Stage.CURRENT: version, Stage.PREVIOUS: 1}
