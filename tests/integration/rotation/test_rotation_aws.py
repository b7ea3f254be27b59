"""The AWS rotators against moto's server over HTTP: IAM access keys and Secrets Manager labels.

What moto cannot prove: it does not check request signatures, so "the new
key authenticates" means STS resolves the key id to the right user (against
AWS the same call also proves the secret key signs). Nothing here uses
``RotateSecret`` (it needs a Lambda) or a ``GetSecretValue`` without an
explicit stage (moto can answer that with a stale version).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from runlease.ledger.base import AuditQuery
from runlease.models import Outcome, Stage
from runlease.rotation import RotationEngine, RotationTestFailed, Status, Step
from runlease.rotation.rotators.aws_iam_key import key_ref
from support.homes import make_runtime
from support.moto_server import MotoServer

from rotation_support import ADMIN, debug_logs, iam_target, leaks, sm_target, trail_text, values_of


@pytest.fixture
def rt(tmp_path: Path):
    runtime = make_runtime(tmp_path / "home")
    yield runtime
    runtime.close()


def key_status(target, key_id: str) -> str | None:
    keys = target.extra["iam"].list_access_keys(UserName=target.extra["user"])["AccessKeyMetadata"]
    return next((k["Status"] for k in keys if k["AccessKeyId"] == key_id), None)


def labels(target) -> dict[str, list[str]]:
    return target.extra["sm"].describe_secret(SecretId=target.extra["secret_id"])["VersionIdsToStages"]


def test_iam_key_rotation_uses_both_slots_then_deletes_the_old_key(rt, moto_server: MotoServer) -> None:
    target = iam_target(rt, moto_server.endpoint)
    engine = RotationEngine(rt.broker)
    old = rt.store.get(target.path).value
    logs: list[str] = []
    with debug_logs(logs):
        state = engine.rotate(target.path, ADMIN)
    new = rt.store.get(target.path).value
    assert state.status is Status.GRACE and new["login"] != old["login"]
    assert new["extra"] == old["extra"]  # region and endpoint carried over
    assert target.works(old) and target.works(new)
    with debug_logs(logs):
        engine.retire(target.path, ADMIN)
    assert key_status(target, old["login"]) is None  # deactivated, then deleted
    assert not target.works(old) and target.works(new)
    with debug_logs(logs):
        engine.rotate(target.path, ADMIN)
        engine.retire(target.path, ADMIN)
    keys = target.extra["iam"].list_access_keys(UserName=target.extra["user"])["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in keys] == [rt.store.get(target.path).value["login"]]
    assert any("iam.CreateAccessKey" in line for line in logs)  # botocore's DEBUG lines were captured
    assert leaks(values_of(rt, target.path), trail_text(rt), *logs) == []


def test_iam_retire_without_delete_leaves_the_old_key_inactive(rt, moto_server: MotoServer) -> None:
    target = iam_target(rt, moto_server.endpoint, delete_on_retire=False)
    engine = RotationEngine(rt.broker)
    old = rt.store.get(target.path).value
    engine.rotate(target.path, ADMIN)
    engine.retire(target.path, ADMIN)
    assert key_status(target, old["login"]) == "Inactive"
    assert not target.works(old)


def test_iam_failed_test_keeps_current_and_deletes_the_pending_key(rt, moto_server: MotoServer) -> None:
    target = iam_target(rt, moto_server.endpoint)
    engine = RotationEngine(rt.broker)
    current = rt.store.get(target.path).value
    state = engine.start(target.path, ADMIN)
    for step in (Step.CREATE, Step.SET):
        state = engine.run_step(target.path, ADMIN, step, state.token)
    pending = rt.store.get(target.path, stage=Stage.PENDING).value
    # Someone deletes the new key between set and test: STS no longer knows it.
    target.extra["iam"].delete_access_key(UserName=target.extra["user"], AccessKeyId=pending["login"])
    with pytest.raises(RotationTestFailed, match=f"not IAM user {target.extra['user']}"):
        engine.run_step(target.path, ADMIN, Step.TEST, state.token)
    assert engine.state(target.path).status is Status.FAILED
    assert rt.store.info(target.path).stages == {Stage.CURRENT: 1}
    assert target.works(current)
    assert key_status(target, pending["login"]) is None
    assert leaks([pending["password"], current["password"]], trail_text(rt)) == []


def test_secrets_manager_labels_move_like_a_rotation_lambda_would(rt, moto_server: MotoServer) -> None:
    target = sm_target(rt, moto_server.endpoint)
    engine = RotationEngine(rt.broker)
    old = rt.store.get(target.path).value
    moto_server.start_recording()
    logs: list[str] = []
    with debug_logs(logs):
        state = engine.rotate(target.path, ADMIN)
    recorded = moto_server.recorded()
    new = rt.store.get(target.path).value
    version = f"runlease-{state.token}"
    assert labels(target)[version] == ["AWSCURRENT"]  # AWSPENDING removed after finish
    assert [v for v, s in labels(target).items() if "AWSPREVIOUS" in s] != [version]
    assert target.works(old) and target.works(new)
    with debug_logs(logs):
        engine.retire(target.path, ADMIN)
    assert not target.works(old) and target.works(new)
    assert sorted(s for stages in labels(target).values() for s in stages) == ["AWSCURRENT"]
    assert any("PutSecretValue" in line for line in logs)
    assert leaks([old, new], trail_text(rt), *logs) == []
    reads = [r for r in recorded if r.get("headers", {}).get("X-Amz-Target", "").endswith("GetSecretValue")]
    assert reads, "the rotation read the target"
    for read in reads:
        body = str(read.get("body") or "")
        request = json.loads(base64.b64decode(body) if read.get("body_encoded") else body)
        assert request.get("VersionStage"), "every read names its stage"


def test_secrets_manager_failed_test_leaves_awscurrent_and_drops_awspending(rt, moto_server: MotoServer) -> None:
    target = sm_target(rt, moto_server.endpoint)
    engine = RotationEngine(rt.broker)
    current = rt.store.get(target.path).value
    state = engine.start(target.path, ADMIN)
    for step in (Step.CREATE, Step.SET):
        state = engine.run_step(target.path, ADMIN, step, state.token)
    version = f"runlease-{state.token}"
    assert labels(target)[version] == ["AWSPENDING"]
    # Someone takes AWSPENDING off the staged version between set and test.
    target.extra["sm"].update_secret_version_stage(SecretId=target.extra["secret_id"], VersionStage="AWSPENDING",
                                                   RemoveFromVersionId=version)
    with pytest.raises(RotationTestFailed, match="AWSPENDING of .* does not hold PENDING v2"):
        engine.run_step(target.path, ADMIN, Step.TEST, state.token)
    assert target.works(current)
    assert "AWSPENDING" not in [s for stages in labels(target).values() for s in stages]
    errors = [e for e in rt.ledger.events(AuditQuery(action="rotate")) if e.outcome is Outcome.ERROR]
    assert [e.detail["step"] for e in errors] == ["test"]
    assert engine.rotate(target.path, ADMIN).status is Status.GRACE
    assert target.works(rt.store.get(target.path).value)


def test_secrets_manager_refuses_to_demote_a_value_written_outside_runlease(rt, moto_server: MotoServer) -> None:
    target = sm_target(rt, moto_server.endpoint)
    target.extra["sm"].put_secret_value(SecretId=target.extra["secret_id"], SecretString="sk_" + "z" * 43)
    with pytest.raises(RotationTestFailed, match="AWSCURRENT of .* does not hold CURRENT v1"):
        RotationEngine(rt.broker).rotate(target.path, ADMIN)
    assert target.extra["sm"].get_secret_value(SecretId=target.extra["secret_id"],
                                               VersionStage="AWSCURRENT")["SecretString"] == "sk_" + "z" * 43


def test_iam_back_to_back_rotations_with_delete_on_retire_false(rt, moto_server: MotoServer) -> None:
    """The inactive retired key is runlease's own: the next create deletes it (and audits that) to free the slot."""
    target = iam_target(rt, moto_server.endpoint, delete_on_retire=False)
    engine = RotationEngine(rt.broker)
    held = [rt.store.get(target.path).value["login"]]
    for _ in range(3):
        engine.rotate(target.path, ADMIN)
        engine.retire(target.path, ADMIN)
        assert engine.state(target.path).status is Status.DONE
        held.append(rt.store.get(target.path).value["login"])
        assert key_status(target, held[-2]) == "Inactive" and key_status(target, held[-1]) == "Active"
    keys = target.extra["iam"].list_access_keys(UserName=target.extra["user"])["AccessKeyMetadata"]
    assert sorted(k["AccessKeyId"] for k in keys) == sorted(held[-2:])
    deleted = [e.detail for e in rt.ledger.events(AuditQuery(action="rotate"))
               if e.detail.get("effect") == "deleted-access-key"]
    assert [d["access_key_sha256"] for d in deleted] == [key_ref(k)["access_key_sha256"] for k in held[:2]]
    assert leaks(held, trail_text(rt)) == []  # named by hint and hash, never the whole key id
    assert all("delete_on_retire=false" in d["why"] for d in deleted)


def test_iam_never_deletes_a_second_key_it_did_not_create(rt, moto_server: MotoServer) -> None:
    """A key someone made a moment before the rotation is not an orphan: refuse, touch nothing, stay retryable."""
    target = iam_target(rt, moto_server.endpoint)
    engine = RotationEngine(rt.broker)
    iam, user = target.extra["iam"], target.extra["user"]
    theirs = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    state = engine.start(target.path, ADMIN)
    with pytest.raises(Exception, match=f"{theirs}.*runlease did not create it"):
        engine.run_step(target.path, ADMIN, Step.CREATE, state.token)
    assert key_status(target, theirs) == "Active"
    iam.delete_access_key(UserName=user, AccessKeyId=theirs)  # the operator frees the slot ...
    state = engine.rotate(target.path, ADMIN, token=state.token)  # ... and the same rotation goes on
    assert state.status is Status.GRACE


def test_iam_orphan_of_a_crashed_create_is_recognised_by_its_record(rt, moto_server: MotoServer,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from runlease.rotation.rotators.aws_iam_key import KEY_TAG

    target = iam_target(rt, moto_server.endpoint)
    engine = RotationEngine(rt.broker)
    iam, user = target.extra["iam"], target.extra["user"]
    state = engine.start(target.path, ADMIN)
    # What a create that died after CreateAccessKey and its record leaves behind:
    orphan = iam.create_access_key(UserName=user)["AccessKey"]["AccessKeyId"]
    iam.tag_user(UserName=user, Tags=[{"Key": KEY_TAG + orphan, "Value": f"{target.path}@{state.token}"}])
    state = engine.rotate(target.path, ADMIN, token=state.token)
    assert state.status is Status.GRACE and key_status(target, orphan) is None
    deleted = [e.detail for e in rt.ledger.events(AuditQuery(action="rotate"))
               if e.detail.get("effect") == "deleted-access-key"]
    assert [d["access_key_hint"] for d in deleted] == [orphan[-4:]] and "orphan" in deleted[0]["why"]
    tags = {t["Key"] for t in iam.list_user_tags(UserName=user)["Tags"]}
    assert KEY_TAG + orphan not in tags
