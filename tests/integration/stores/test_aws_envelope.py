"""The envelope layout on moto's server over HTTP: one GetSecretValue per uncached read, old layout still read,
settings changed after a write honoured, copied or forged SecretStrings refused or confined.

Requests are counted by :mod:`support.aws_fault_proxy` (a proxy on 127.0.0.1 in front of moto that
logs each action). Writes "behind runlease's back" are plain boto3 calls against moto, as an IAM
principal with Secrets Manager permissions would make them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from runlease.errors import InvalidValueError
from runlease.ledger.base import AuditQuery
from runlease.models import LeaseState, RunIdentity, SecretPath, Stage
from runlease.rotation.policy import POLICY_KEY, RotationPolicy
from runlease.rotation.state import STATE_KEY
from runlease.runtime import Runtime
from runlease.store.aws import PLACEHOLDER, SECRET_ONLY_KEYS, SETTINGS_LABEL, AwsSecretsStore, version_id
from store_support import BASE, BASE_SECRET, P, ROLE_ARN, STS, aws_options
from support.aws_fault_proxy import FaultProxy
from support.homes import make_runtime

FORGED = {"conn_type": "aws", "login": "AKIAFORGEDFORGEDEXAM", "password": "Forged-Secret-Key-0123456789"}  # runlease: allow aws-access-key-id, high-entropy-secret (test fixture)
TASK = RunIdentity(orchestrator="airflow", pipeline="etl", run_id="manual__1", task_id="load", try_number=1,
                   principal="etl")


def sm(moto_url: str) -> Any:
    return boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_url)


def fresh(store: AwsSecretsStore) -> AwsSecretsStore:
    """Another process: same secrets, nothing cached."""
    return AwsSecretsStore(store.options)


def envelope(name: str, version: int, settings: dict[str, Any], value: Any) -> str:
    return json.dumps({"runlease:envelope": 1, "secret": name, "version": version, "settings": settings,
                       "value": value})


def write_current(client: Any, name: str, text: str, token: str | None = None) -> None:
    """PutSecretValue under a side label, then AWSCURRENT moved to it (moto ignores AWSCURRENT in PutSecretValue)."""
    kwargs = {"ClientRequestToken": token} if token else {}
    vid = client.put_secret_value(SecretId=name, SecretString=text, VersionStages=["hand-written"], **kwargs)["VersionId"]
    make_current(client, name, vid)


def make_current(client: Any, name: str, vid: str) -> None:
    current = [v for v, labels in client.describe_secret(SecretId=name)["VersionIdsToStages"].items()
               if "AWSCURRENT" in labels][0]
    client.update_secret_version_stage(SecretId=name, VersionStage="AWSCURRENT", MoveToVersionId=vid,
                                       RemoveFromVersionId=current)


def test_the_secret_only_keys_are_the_rotation_keys() -> None:
    assert SECRET_ONLY_KEYS == {POLICY_KEY, STATE_KEY}


def test_a_secret_in_the_old_layout_is_still_read_with_its_tags(moto_url: str, proxy: FaultProxy) -> None:
    """Written as runlease wrote before the envelope: bare JSON value, settings only in the tags."""
    store = AwsSecretsStore.from_options(aws_options(proxy.url))
    name = f"{store.prefix}{P}"
    client = sm(moto_url)
    client.create_secret(Name=name, ClientRequestToken=version_id(0), SecretString=PLACEHOLDER,
                         Tags=[{"Key": "runlease:managed", "Value": "true"},
                               {"Key": "runlease:meta:issuer", "Value": "aws-sts"},
                               {"Key": "runlease:meta:role_arn", "Value": ROLE_ARN}])
    client.put_secret_value(SecretId=name, ClientRequestToken=version_id(1), SecretString=json.dumps(BASE),
                            VersionStages=["AWSCURRENT"])
    proxy.taken()
    got = store.get(P)
    assert (got.version, got.value, got.metadata) == (1, BASE, STS)
    assert proxy.taken() == ["GetSecretValue", "DescribeSecret"]  # the tags, once
    assert store.get(P).metadata == STS and proxy.taken() == ["GetSecretValue"]
    # A runlease put over it writes the envelope; the old version keeps its settings as PREVIOUS.
    assert store.put(P, FORGED, metadata={"issuer": "static"}) == 2
    reader = fresh(store)
    proxy.taken()
    assert reader.get(P).metadata == {**STS, "issuer": "static"} and proxy.taken() == ["GetSecretValue"]
    previous = reader.get(P, stage=Stage.PREVIOUS)
    assert (previous.version, previous.value, previous.metadata) == (1, BASE, STS)
    assert proxy.taken() == ["GetSecretValue", "DescribeSecret"]


def test_first_lease_through_the_broker_is_one_request(rt: Runtime, proxy: FaultProxy) -> None:
    rt.broker.put(P, BASE, RunIdentity(orchestrator="cli", pipeline="admin"), metadata={"issuer": "static"})
    # Another process (its own home and store object): nothing read or cached yet.
    other = make_runtime(rt.settings.home.parent / "other", store="aws", store_options=rt.store.options.model_dump())
    try:
        proxy.taken()
        lease = other.broker.lease(P, TASK)
        assert lease.value == BASE and lease.issuer == "static"
        assert proxy.taken() == ["GetSecretValue"]
    finally:
        other.close()


def test_changed_lease_settings_reach_readers_of_existing_versions(moto_url: str, proxy: FaultProxy) -> None:
    store = AwsSecretsStore.from_options(aws_options(proxy.url))
    store.put(P, BASE, metadata={"issuer": "static"})
    store.put(P, BASE, stage=Stage.PENDING)
    reader = fresh(store)
    assert reader.get(P).metadata == {"issuer": "static"}
    # A rotation policy or state is the secret's, not a version's: no label, reads stay one request.
    store.update_metadata(P, RotationPolicy(rotator="token", interval_s=86400, settings={}).to_metadata())
    labels = sm(moto_url).describe_secret(SecretId=f"{store.prefix}{P}")["VersionIdsToStages"]
    assert not [label for names in labels.values() for label in names if label.startswith(SETTINGS_LABEL)]
    proxy.taken()
    assert reader.get(P).metadata == {"issuer": "static"} and proxy.taken() == ["GetSecretValue"]
    assert POLICY_KEY in reader.resolve(P).metadata
    store.update_metadata(P, {"issuer": "static"})  # no change: nothing to label
    labels = sm(moto_url).describe_secret(SecretId=f"{store.prefix}{P}")["VersionIdsToStages"]
    assert not [label for names in labels.values() for label in names if label.startswith(SETTINGS_LABEL)]
    # A lease setting changed after the write: the versions holding a stage are labelled, reads take the tags.
    store.update_metadata(P, STS)
    labels = sm(moto_url).describe_secret(SecretId=f"{store.prefix}{P}")["VersionIdsToStages"]
    assert SETTINGS_LABEL + "1" in labels[version_id(1)] and SETTINGS_LABEL + "2" in labels[version_id(2)]
    proxy.taken()
    for who in (reader, fresh(store)):  # one that read before, one that never did
        got = who.get(P)
        assert got.metadata["issuer"] == "aws-sts" and got.metadata["role_arn"] == ROLE_ARN
        assert who.get(P, stage=Stage.PENDING).metadata["issuer"] == "aws-sts"
    assert proxy.taken() == ["GetSecretValue", "DescribeSecret"] * 4
    # A new version seals the changed settings: one request again, and the label of a version that
    # holds no stage any more goes at the next change.
    store.put(P, FORGED)
    proxy.taken()
    assert fresh(store).get(P).metadata["issuer"] == "aws-sts" and proxy.taken() == ["GetSecretValue"]
    store.put(P, BASE)  # version 1 holds no stage from here on
    store.update_metadata(P, {"issuer": "static"})
    labels = sm(moto_url).describe_secret(SecretId=f"{store.prefix}{P}")["VersionIdsToStages"]
    assert SETTINGS_LABEL + "1" not in labels.get(version_id(1), [])
    assert fresh(store).get(P).metadata["issuer"] == "static"


def test_a_value_cannot_pose_as_an_envelope(moto_url: str) -> None:
    store = AwsSecretsStore.from_options(aws_options(moto_url))
    with pytest.raises(InvalidValueError, match="runlease:envelope"):
        store.put(P, {**BASE, "runlease:envelope": 1})
    store.put(SecretPath.parse("dev/variables/text"), '{"runlease:envelope": 1}')  # a string stays a string
    assert store.get(SecretPath.parse("dev/variables/text")).value == '{"runlease:envelope": 1}'


def _sts_secret(rt: Runtime, moto_url: str) -> tuple[AwsSecretsStore, str]:
    admin = RunIdentity(orchestrator="cli", pipeline="admin")
    base = {**BASE, "extra": {"endpoint_url": moto_url, "region_name": "us-east-1"}}  # STS: moto
    rt.broker.put(P, base, admin, metadata={"issuer": "static"})  # v1: static
    rt.broker.put(P, base, admin, metadata=STS)  # v2: the same credentials, now only through STS
    store = rt.store
    assert isinstance(store, AwsSecretsStore)
    return store, f"{store.prefix}{P}"


def _refused(rt: Runtime, match: str) -> None:
    for reader in (rt.store, fresh(rt.store)):  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match=match) as caught:
            reader.get(P)
        assert BASE_SECRET not in str(caught.value)
    rt.broker.cache.forget(P)
    with pytest.raises(InvalidValueError):
        rt.broker.lease(P, TASK)
    assert not list(rt.ledger.find_leases(state=LeaseState.ACTIVE))
    assert not [e for e in rt.ledger.events(AuditQuery(action="lease")) if e.outcome.value == "ok"]


def test_an_old_static_version_copied_over_an_sts_secret_is_refused(rt: Runtime, moto_url: str) -> None:
    """Replaying version 1's SecretString (static) as a new version 3 must not make BASE leasable as static."""
    store, name = _sts_secret(rt, moto_url)
    client = sm(moto_url)
    old = client.get_secret_value(SecretId=name, VersionId=version_id(1))["SecretString"]
    write_current(client, name, old, version_id(3))
    _refused(rt, "another secret or version")


def test_an_envelope_copied_from_another_secret_is_refused(rt: Runtime, moto_url: str) -> None:
    store, name = _sts_secret(rt, moto_url)
    other = SecretPath.parse("dev/connections/static_one")
    store.put(other, BASE, metadata={"issuer": "static"})
    client = sm(moto_url)
    text = client.get_secret_value(SecretId=f"{store.prefix}{other}", VersionStage="AWSCURRENT")["SecretString"]
    write_current(client, name, text.replace('"version":1', '"version":3'), version_id(3))
    _refused(rt, "another secret or version")


@pytest.mark.parametrize("mangle", ["format", "field", "settings"])
def test_an_envelope_runlease_cannot_vouch_for_is_refused(rt: Runtime, moto_url: str, mangle: str) -> None:
    store, name = _sts_secret(rt, moto_url)
    doc = json.loads(envelope(name, 3, {"issuer": "static"}, BASE))
    if mangle == "format":
        doc["runlease:envelope"] = 2
    elif mangle == "field":
        doc[BASE_SECRET] = "static"  # an unknown field is refused without being named
    else:
        doc["settings"] = "static"
    client = sm(moto_url)
    write_current(client, name, json.dumps(doc), version_id(3))
    _refused(rt, {"format": "format 2", "field": "missing none, 1 unknown", "settings": "settings are not an object"}[mangle])


def test_an_envelope_under_a_version_id_runlease_did_not_write_is_refused(rt: Runtime, moto_url: str) -> None:
    store, name = _sts_secret(rt, moto_url)
    write_current(sm(moto_url), name, envelope(name, 3, {"issuer": "static"}, BASE))  # AWS picks a UUID VersionId
    _refused(rt, "runlease did not write")


def test_tags_edited_behind_runleases_back_do_not_change_what_a_version_is_leased_as(
    rt: Runtime, moto_url: str
) -> None:
    """Today's attack (issue 16, 1): flip the issuer tag to static. A version's own settings win."""
    store, name = _sts_secret(rt, moto_url)
    sm(moto_url).tag_resource(SecretId=name, Tags=[{"Key": "runlease:meta:issuer", "Value": "static"}])
    for reader in (store, fresh(store)):
        assert reader.get(P).metadata["issuer"] == "aws-sts"
    lease = rt.broker.lease(P, TASK)
    assert lease.issuer == "aws-sts" and BASE_SECRET not in json.dumps(lease.value)


def test_a_forged_envelope_pairs_only_what_its_writer_wrote(rt: Runtime, moto_url: str) -> None:
    """The trust boundary: whoever may write versions (PutSecretValue) chooses value and settings together.

    A forger who can write but not read cannot get the base credentials leased as ``static``:
    to pair them with ``static`` it would have to write them, so it leases out only what it wrote.
    """
    store, name = _sts_secret(rt, moto_url)
    client = sm(moto_url)
    write_current(client, name, envelope(name, 3, {"issuer": "static"}, FORGED), version_id(3))
    lease = rt.broker.lease(P, TASK)
    assert (lease.version, lease.issuer, lease.value) == (3, "static", FORGED)
    assert BASE_SECRET not in json.dumps(lease.value)
    # The versions runlease wrote still pair as they were written.
    previous = fresh(store).get(P, stage=Stage.PREVIOUS)
    assert (previous.version, previous.metadata["issuer"]) == (2, "aws-sts")
