from __future__ import annotations

import pytest
from support.core import conn

from runlease.errors import ConflictError, InvalidValueError, SecretNotFoundError
from runlease.models import SecretPath, Stage
from runlease.runtime import Runtime
from runlease.store.base import SecretStore
from runlease.store.local import LocalStore

P = SecretPath.parse("prod/connections/warehouse")
V = SecretPath.parse("prod/variables/batch_size")


@pytest.fixture
def store(runtime: Runtime) -> LocalStore:
    return runtime.store


def stages(store: LocalStore, path: SecretPath = P) -> dict[Stage, int]:
    return store.info(path).stages


def test_local_store_satisfies_the_protocol(store: LocalStore) -> None:
    assert isinstance(store, SecretStore)


def test_put_get_connection_and_string(store: LocalStore) -> None:
    assert store.put(P, conn("pw-one")) == 1
    assert store.put(V, "512") == 1
    got = store.get(P)
    assert got.value == conn("pw-one") and got.version == 1 and got.path == P
    assert store.get(V).value == "512"
    assert "pw-one" not in repr(got)


def test_new_current_moves_old_current_to_previous(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    assert stages(store) == {Stage.CURRENT: 1}
    assert store.put(P, conn("pw-two")) == 2
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    assert store.put(P, conn("pw-three")) == 3
    assert stages(store) == {Stage.CURRENT: 3, Stage.PREVIOUS: 2}
    assert store.get(P).value["password"] == "pw-three"
    assert store.get(P, stage=Stage.PREVIOUS).value["password"] == "pw-two"
    assert store.get(P, version=1).value["password"] == "pw-one"
    assert store.resolve(P).version == 3
    assert store.resolve(P, Stage.PREVIOUS).version == 2


def test_pending_write_does_not_move_current(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    assert store.put(P, conn("pw-pending"), stage=Stage.PENDING) == 2
    assert stages(store) == {Stage.CURRENT: 1, Stage.PENDING: 2}
    assert store.get(P).value["password"] == "pw-one"
    assert store.get(P, stage=Stage.PENDING).value["password"] == "pw-pending"
    with pytest.raises(SecretNotFoundError, match="no PREVIOUS version"):
        store.get(P, stage=Stage.PREVIOUS)


def test_cas_zero_creates_only_if_absent(store: LocalStore) -> None:
    assert store.put(P, conn("pw-one"), cas=0) == 1
    with pytest.raises(ConflictError, match=str(P)) as exc:
        store.put(P, conn("pw-two"), cas=0)
    assert "pw-two" not in str(exc.value)
    assert store.info(P).versions == 1
    assert [v.version for v in store.history(P)] == [1]
    assert store.get(P).value["password"] == "pw-one"


def test_cas_wrong_version_conflicts_and_writes_nothing(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    store.put(P, conn("pw-two"))
    before = (store.info(P).versions, stages(store), store.kek_ids_in_use())
    for wrong in (1, 3, 99):
        with pytest.raises(ConflictError, match=f"expected CURRENT v{wrong}, found v2"):
            store.put(P, conn("pw-lost"), cas=wrong)
    assert (store.info(P).versions, stages(store), store.kek_ids_in_use()) == before
    assert len(store.history(P)) == 2
    assert store.put(P, conn("pw-three"), cas=2) == 3


def test_cas_on_missing_secret(store: LocalStore) -> None:
    with pytest.raises(ConflictError):
        store.put(P, conn(), cas=1)
    assert store.list() == []


def test_move_stage_with_expected(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    store.put(P, conn("pw-two"), stage=Stage.PENDING)
    # Promote PENDING the way rotation's finish step does.
    store.move_stage(P, Stage.PREVIOUS, 1, expected=None)
    store.move_stage(P, Stage.CURRENT, 2, expected=1)
    store.move_stage(P, Stage.PENDING, None, expected=2)
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    assert store.get(P).value["password"] == "pw-two"
    with pytest.raises(ConflictError, match="expected v1, found 2"):
        store.move_stage(P, Stage.CURRENT, 1, expected=1)
    assert stages(store) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}


def test_move_stage_to_missing_version_fails(store: LocalStore) -> None:
    store.put(P, conn())
    for bad in (0, 2, -1):
        with pytest.raises(SecretNotFoundError, match=f"no version {bad}"):
            store.move_stage(P, Stage.CURRENT, bad)
    assert stages(store) == {Stage.CURRENT: 1}
    with pytest.raises(SecretNotFoundError):
        store.move_stage(SecretPath.parse("prod/connections/nope"), Stage.CURRENT, 1)


def test_history_lists_every_version_with_labels(store: LocalStore) -> None:
    store.put(P, conn("a"))
    store.put(P, conn("b"))
    store.put(P, conn("c"), stage=Stage.PENDING)
    history = store.history(P)
    assert [(h.version, h.stages) for h in history] == [
        (1, [Stage.PREVIOUS]), (2, [Stage.CURRENT]), (3, [Stage.PENDING]),
    ]
    assert all(h.path == P for h in history)
    with pytest.raises(SecretNotFoundError):
        store.history(SecretPath.parse("prod/connections/nope"))


def test_soft_delete_and_revive(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    store.put(P, conn("pw-two"))
    store.delete(P)
    with pytest.raises(SecretNotFoundError, match=str(P)):
        store.get(P)
    with pytest.raises(SecretNotFoundError):
        store.resolve(P)
    with pytest.raises(SecretNotFoundError):
        store.delete(P)
    assert [h.version for h in store.history(P)] == [1, 2]
    assert store.list() == []
    [info] = store.list(include_deleted=True)
    assert info.deleted and info.path == P
    assert store.info(P).deleted
    # A put revives it; versions keep counting.
    assert store.put(P, conn("pw-three"), cas=0) == 3
    assert store.get(P).value["password"] == "pw-three"
    assert not store.info(P).deleted
    assert [h.version for h in store.history(P)] == [1, 2, 3]


def test_list_with_prefix(store: LocalStore) -> None:
    for path in ("prod/connections/warehouse", "prod/connections/wh2", "prod/variables/x",
                 "dev/connections/warehouse", "prod/tokens/a_b", "prod/tokens/axb"):
        store.put(SecretPath.parse(path), "value-12345")
    assert [str(i.path) for i in store.list()] == sorted([
        "dev/connections/warehouse", "prod/connections/warehouse", "prod/connections/wh2",
        "prod/tokens/a_b", "prod/tokens/axb", "prod/variables/x",
    ])
    assert [str(i.path) for i in store.list("prod/connections/")] == [
        "prod/connections/warehouse", "prod/connections/wh2"]
    assert [str(i.path) for i in store.list("prod/connections/wa")] == ["prod/connections/warehouse"]
    assert [str(i.path) for i in store.list("dev/")] == ["dev/connections/warehouse"]


def test_list_prefix_wildcards_are_literal(store: LocalStore) -> None:
    for path in ("prod/tokens/a_b", "prod/tokens/axb", "prod/tokens/a.b"):
        store.put(SecretPath.parse(path), "value-12345")
    assert [str(i.path) for i in store.list("prod/tokens/a_")] == ["prod/tokens/a_b"]
    assert store.list("prod/tokens/%") == []
    assert store.list("%") == []
    assert store.list("prod/tokens/a%") == []
    assert store.list("_rod/") == []
    assert store.list("prod\\") == []


def test_info_counts_and_timestamps(store: LocalStore) -> None:
    store.put(P, conn("a"))
    first = store.info(P)
    store.put(P, conn("b"))
    info = store.info(P)
    assert info.versions == 2
    assert info.created_at == first.created_at
    assert info.updated_at >= first.updated_at
    with pytest.raises(SecretNotFoundError):
        store.info(SecretPath.parse("prod/connections/nope"))


def test_update_metadata_merges_and_is_returned_by_resolve(store: LocalStore) -> None:
    store.put(P, conn())
    assert store.update_metadata(P, {"issuer": "static", "rotation": {"days": 30}}) == {
        "issuer": "static", "rotation": {"days": 30}}
    assert store.update_metadata(P, {"owner": "ml-platform", "issuer": "postgres"}) == {
        "issuer": "postgres", "rotation": {"days": 30}, "owner": "ml-platform"}
    assert store.resolve(P).metadata["issuer"] == "postgres"
    assert store.get(P).metadata["owner"] == "ml-platform"
    assert store.info(P).metadata["rotation"] == {"days": 30}
    # Metadata changes never create versions.
    assert store.info(P).versions == 1
    with pytest.raises(SecretNotFoundError):
        store.update_metadata(SecretPath.parse("prod/connections/nope"), {"a": 1})


def test_missing_secret_and_version(store: LocalStore) -> None:
    with pytest.raises(SecretNotFoundError, match="prod/connections/warehouse not found"):
        store.get(P)
    store.put(P, conn())
    with pytest.raises(SecretNotFoundError, match="no version 5"):
        store.get(P, version=5)


@pytest.mark.parametrize("bad", [12345, None, ["a"], b"bytes"])
def test_non_string_non_dict_value_is_rejected_and_nothing_written(store: LocalStore, bad: object) -> None:
    with pytest.raises(InvalidValueError, match=type(bad).__name__):
        store.put(P, bad)  # type: ignore[arg-type]
    assert store.list(include_deleted=True) == []


def test_versions_are_sealed_under_their_own_path(store: LocalStore, runtime: Runtime) -> None:
    """Copying a version row onto another path in SQLite must not make it readable there."""
    store.put(P, conn("pw-source"))
    other = SecretPath.parse("prod/connections/other")
    store.put(other, conn("pw-target"))
    with runtime.db.write() as tx:
        row = tx.conn.execute("SELECT wrapped_dek, ciphertext, kek_id FROM versions WHERE path=?", (str(P),)).fetchone()
        tx.conn.execute("UPDATE versions SET wrapped_dek=?, ciphertext=?, kek_id=? WHERE path=?", (*row, str(other)))
    from runlease.errors import IntegrityError

    with pytest.raises(IntegrityError):
        store.get(other)


def test_revive_after_delete_drops_old_stage_labels(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    store.put(P, conn("pw-two"))
    store.put(P, conn("pw-pending"), stage=Stage.PENDING)
    store.delete(P)
    store.put(P, conn("pw-fresh"), cas=0)
    assert stages(store) == {Stage.CURRENT: 4}
    for stage in (Stage.PREVIOUS, Stage.PENDING):
        with pytest.raises(SecretNotFoundError):
            store.get(P, stage=stage)
    # Explicit versions stay readable for audit and recovery.
    assert store.get(P, version=1).value["password"] == "pw-one"


def test_revive_with_pending_write_has_no_current(store: LocalStore) -> None:
    store.put(P, conn("pw-one"))
    store.delete(P)
    store.put(P, conn("pw-pending"), stage=Stage.PENDING)
    assert stages(store) == {Stage.PENDING: 2}
    with pytest.raises(SecretNotFoundError, match="no CURRENT version"):
        store.get(P)
