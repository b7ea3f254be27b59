from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from support.core import conn

from runlease.errors import AccessDeniedError, ConfigError
from runlease.ledger.base import AuditQuery
from runlease.models import Capability, Outcome, RunIdentity, SecretPath, Stage
from runlease.policy.grants import EXAMPLE_POLICY, Policy
from runlease.runtime import Runtime

WAREHOUSE = "connections/warehouse"


def who(orchestrator: str = "airflow", pipeline: str = "training_daily", task: str | None = "train",
        principal: str | None = None) -> RunIdentity:
    return RunIdentity(orchestrator=orchestrator, pipeline=pipeline, run_id="r1", task_id=task, try_number=1,
                       principal=principal)


def policy_from(tmp_path: Path, text: str) -> Policy:
    f = tmp_path / "policy.toml"
    f.write_text(textwrap.dedent(text))
    return Policy.load(f)


def grant(principals: str = '["airflow:training_*"]', environments: str = '["dev", "stage"]',
          paths: str = '["connections/warehouse", "variables/*"]', capabilities: str = '["lease"]') -> str:
    return f"""
    [[grant]]
    principals = {principals}
    environments = {environments}
    paths = {paths}
    capabilities = {capabilities}
    """


def allows(policy: Policy, identity: RunIdentity, path: str, cap: Capability = Capability.LEASE) -> bool:
    return policy.allows(identity, SecretPath.parse(path), cap)


# --- evaluation ------------------------------------------------------------------


def test_no_policy_file_allows_everything(tmp_path: Path) -> None:
    policy = Policy.load(tmp_path / "missing.toml")
    assert not policy.enforced
    for cap in Capability:
        assert allows(policy, who("kfp", "anything", None), "prod/tokens/root", cap)


def test_policy_file_present_denies_by_default(tmp_path: Path) -> None:
    empty = policy_from(tmp_path, "# nothing granted yet\n")
    assert empty.enforced and empty.source == str(tmp_path / "policy.toml")
    for cap in Capability:
        assert not allows(empty, who(), f"dev/{WAREHOUSE}", cap)


def test_principal_globs_and_fewer_segments_as_wildcards(tmp_path: Path) -> None:
    p = policy_from(tmp_path, grant())
    assert allows(p, who(pipeline="training_daily", task="train"), f"dev/{WAREHOUSE}")
    assert allows(p, who(pipeline="training_hourly", task="anything"), f"dev/{WAREHOUSE}")
    assert allows(p, who(pipeline="training_daily", task=None), f"dev/{WAREHOUSE}")
    assert not allows(p, who(pipeline="etl_daily"), f"dev/{WAREHOUSE}")
    assert not allows(p, who(orchestrator="kfp", pipeline="training_daily"), f"dev/{WAREHOUSE}")
    # Globs are case-sensitive.
    assert not allows(p, who(pipeline="Training_daily"), f"dev/{WAREHOUSE}")


@pytest.mark.parametrize(
    ("pattern", "identity", "expected"),
    [
        ("airflow", who(pipeline="x", task="y"), True),
        ("airflow:*", who(pipeline="x", task="y"), True),
        ("airflow:training_daily:train", who(task="train"), True),
        ("airflow:training_daily:train", who(task="evaluate"), False),
        ("airflow:training_daily:-", who(task=None), True),
        ("airflow:training_daily:-", who(task="train"), False),
        ("*:training_daily", who(orchestrator="kfp"), True),
        ("airflow:training_daily:train:extra", who(task="train"), False),
        ("kfp", who(), False),
    ],
)
def test_principal_patterns(tmp_path: Path, pattern: str, identity: RunIdentity, expected: bool) -> None:
    p = policy_from(tmp_path, grant(principals=f'["{pattern}"]'))
    assert allows(p, identity, f"dev/{WAREHOUSE}") is expected


def test_environments_are_separate(tmp_path: Path) -> None:
    p = policy_from(tmp_path, grant(environments='["dev", "stage"]'))
    assert allows(p, who(), f"dev/{WAREHOUSE}")
    assert allows(p, who(), f"stage/{WAREHOUSE}")
    assert not allows(p, who(), f"prod/{WAREHOUSE}")
    assert not allows(p, who(), f"dev-2/{WAREHOUSE}")
    star = policy_from(tmp_path, grant(environments='["*"]'))
    assert allows(star, who(), f"prod/{WAREHOUSE}")


def test_path_globs_on_kind_and_name(tmp_path: Path) -> None:
    p = policy_from(tmp_path, grant(paths='["connections/warehouse", "variables/*", "tokens/api_*"]'))
    assert allows(p, who(), "dev/connections/warehouse")
    assert not allows(p, who(), "dev/connections/warehouse2")
    assert not allows(p, who(), "dev/connections/other")
    assert allows(p, who(), "dev/variables/anything")
    assert allows(p, who(), "dev/tokens/api_key")
    assert not allows(p, who(), "dev/tokens/admin_key")
    assert not allows(p, who(), "dev/config/warehouse")
    everything = policy_from(tmp_path, grant(paths='["*"]'))
    assert allows(everything, who(), "dev/tokens/admin_key")


def test_capabilities_and_admin_implies_all(tmp_path: Path) -> None:
    p = policy_from(tmp_path, grant(capabilities='["read"]'))
    assert allows(p, who(), f"dev/{WAREHOUSE}", Capability.READ)
    assert not allows(p, who(), f"dev/{WAREHOUSE}", Capability.LEASE)
    assert not allows(p, who(), f"dev/{WAREHOUSE}", Capability.ROTATE)
    assert not allows(p, who(), f"dev/{WAREHOUSE}", Capability.ADMIN)
    admin = policy_from(tmp_path, grant(capabilities='["admin"]'))
    for cap in Capability:
        assert allows(admin, who(), f"dev/{WAREHOUSE}", cap)
    # admin on one path is not admin on another
    assert not allows(admin, who(), "dev/tokens/root", Capability.READ)


def test_grants_are_unioned(tmp_path: Path) -> None:
    p = policy_from(tmp_path, grant() + grant(principals='["kfp:scoring"]', environments='["prod"]',
                                              paths='["tokens/*"]', capabilities='["read", "lease"]'))
    assert allows(p, who(), f"dev/{WAREHOUSE}")
    assert allows(p, who("kfp", "scoring", None), "prod/tokens/model_api")
    assert not allows(p, who("kfp", "scoring", None), f"dev/{WAREHOUSE}")


def test_example_policy_parses(tmp_path: Path) -> None:
    p = policy_from(tmp_path, EXAMPLE_POLICY)
    assert len(p.grants) == 2
    assert allows(p, who("cli", "admin", None), "prod/tokens/root", Capability.ADMIN)
    assert allows(p, who(), "stage/connections/model_registry")
    assert not allows(p, who(), "prod/connections/warehouse")


# --- enforcement through the broker ----------------------------------------------------


@pytest.fixture
def enforced(runtime: Runtime, reopen: Callable[..., Runtime], admin: RunIdentity) -> Runtime:
    """A home with two secrets, then a policy file, reopened so the broker enforces it."""
    runtime.broker.put("dev/connections/warehouse", conn("pw-warehouse-123"), admin)
    runtime.broker.put("dev/connections/billing", conn("pw-billing-456"), admin)
    runtime.broker.put("prod/connections/warehouse", conn("pw-prod-789"), admin)
    runtime.settings.effective_policy_file.write_text(textwrap.dedent(grant()))
    rt = reopen()
    assert rt.policy.enforced
    return rt


def test_granted_lease_succeeds(enforced: Runtime) -> None:
    lease = enforced.broker.lease("warehouse", who())
    assert lease.value["password"] == "pw-warehouse-123"


@pytest.mark.parametrize(
    ("ref", "identity"),
    [
        ("dev/connections/billing", who()),  # path not granted
        ("prod/connections/warehouse", who()),  # environment not granted
        ("dev/connections/warehouse", who(pipeline="etl_daily", principal="svc-etl")),  # principal not granted
    ],
)
def test_denied_lease_is_raised_and_audited(enforced: Runtime, ref: str, identity: RunIdentity) -> None:
    before = list(enforced.ledger.events(AuditQuery()))
    with pytest.raises(AccessDeniedError) as exc:
        enforced.broker.lease(ref, identity)
    assert ref in str(exc.value) and identity.subject in str(exc.value)
    assert "pw-" not in str(exc.value)
    after = list(enforced.ledger.events(AuditQuery()))
    assert len(after) == len(before) + 1
    event = after[-1]
    assert event.action == "lease" and event.outcome is Outcome.DENIED
    assert event.path == ref
    assert event.principal == (identity.principal or identity.subject)
    assert (event.orchestrator, event.pipeline, event.run_id, event.task_id) == (
        identity.orchestrator, identity.pipeline, identity.run_id, identity.task_id)
    assert event.lease_id is None and event.version is None
    assert event.detail["capability"] == "lease"
    assert event.detail["policy"] == str(enforced.settings.effective_policy_file)
    assert enforced.ledger.find_leases() == []
    assert enforced.ledger.verify().ok


def test_denied_write_read_and_stage_are_audited(enforced: Runtime) -> None:
    identity = who()
    with pytest.raises(AccessDeniedError):
        enforced.broker.put("dev/connections/warehouse", conn("pw-new"), identity)
    with pytest.raises(AccessDeniedError):
        enforced.broker.read("dev/connections/warehouse", identity)
    with pytest.raises(AccessDeniedError):
        enforced.broker.move_stage("dev/connections/warehouse", Stage.CURRENT, 1, identity)
    denied = [e for e in enforced.ledger.events(AuditQuery()) if e.outcome is Outcome.DENIED]
    assert [(e.action, e.detail["capability"]) for e in denied] == [
        ("write", "admin"), ("read", "read"), ("stage", "rotate")]
    assert enforced.store.info(SecretPath.parse("dev/connections/warehouse")).versions == 1
    assert enforced.ledger.verify().ok


def test_denied_events_are_queryable_by_principal(enforced: Runtime) -> None:
    bad = who(pipeline="etl_daily", principal="svc-etl")
    for _ in range(3):
        with pytest.raises(AccessDeniedError):
            enforced.broker.lease("warehouse", bad)
    events = list(enforced.ledger.events(AuditQuery(principal="svc-etl", action="lease")))
    assert len(events) == 3 and {e.outcome for e in events} == {Outcome.DENIED}


# --- malformed policy files ------------------------------------------------------------


def _config_error(tmp_path: Path, text: str) -> str:
    f = tmp_path / "policy.toml"
    f.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as exc:
        Policy.load(f)
    message = str(exc.value)
    assert str(f) in message
    return message


def test_malformed_toml(tmp_path: Path) -> None:
    message = _config_error(tmp_path, "[[grant]\nprincipals = [")
    assert "not valid TOML" in message and "line" in message


def test_unknown_field_in_grant(tmp_path: Path) -> None:
    message = _config_error(tmp_path, grant() + 'colour = "red"\n')
    assert "grant.0.colour" in message


def test_unknown_top_level_field(tmp_path: Path) -> None:
    assert "grants_typo" in _config_error(tmp_path, "[[grants_typo]]\nprincipals = []\n")


@pytest.mark.parametrize("line", ["enforced = false", 'source = "elsewhere"'])
def test_internal_fields_cannot_be_set_from_the_file(tmp_path: Path, line: str) -> None:
    # Once a policy file exists everything not granted is denied; the file cannot switch that off.
    field = line.split()[0]
    assert field in _config_error(tmp_path, line + "\n" + grant())


def test_bad_path_glob(tmp_path: Path) -> None:
    message = _config_error(tmp_path, grant(paths='["prod/connections/warehouse"]'))
    assert "grant.0.paths" in message and "prod/connections/warehouse" in message
    assert "grant.0.paths" in _config_error(tmp_path, grant(paths='["warehouse"]'))


def test_unknown_capability(tmp_path: Path) -> None:
    message = _config_error(tmp_path, grant() + grant(capabilities='["write"]'))
    assert "grant.1.capabilities" in message


@pytest.mark.parametrize("field", ["principals", "environments", "paths", "capabilities"])
def test_missing_or_empty_required_fields(tmp_path: Path, field: str) -> None:
    # A grant names principals or workloads: without either, the error names both.
    expected = "'principals' or 'workloads'" if field == "principals" else f"grant.0.{field}"
    assert expected in _config_error(tmp_path, grant(**{field: "[]"}))
    lines = [line for line in grant().splitlines() if not line.strip().startswith(field)]
    assert expected in _config_error(tmp_path, "\n".join(lines))


def test_wrong_types(tmp_path: Path) -> None:
    assert "grant.0.principals" in _config_error(tmp_path, grant(principals='"airflow"'))


def test_broken_policy_file_stops_the_runtime(runtime: Runtime, reopen: Callable[..., Runtime]) -> None:
    runtime.settings.effective_policy_file.write_text("[[grant]]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="grant.0.bogus"):
        reopen()


# -- verified identity: workloads and require_verified --------------------------------------

def _verified_policy(tmp_path):
    from runlease.policy.grants import Policy
    f = tmp_path / "policy.toml"
    f.write_text(
        '[[grant]]\nworkloads = ["system:serviceaccount:ml:pipeline-a"]\nenvironments = ["prod"]\n'
        'paths = ["connections/a"]\ncapabilities = ["lease"]\n'
        '[[grant]]\nprincipals = ["airflow:dag_b"]\nrequire_verified = true\nenvironments = ["prod"]\n'
        'paths = ["connections/b"]\ncapabilities = ["lease"]\n'
    )
    return Policy.load(f)


def test_workload_grant_matches_only_a_verified_workload(tmp_path):
    from runlease.models import Capability, RunIdentity, SecretPath, Verification
    policy = _verified_policy(tmp_path)
    path = SecretPath.parse("prod/connections/a")
    proof = Verification(method="oidc", subject="system:serviceaccount:ml:pipeline-a", issuer="https://k8s")
    verified = RunIdentity(orchestrator="kfp", pipeline="p", verification=proof)
    assert policy.allows(verified, path, Capability.LEASE)
    # The attacker's claims: the subject as principal, or as pipeline, without a proof.
    for claim in (RunIdentity(orchestrator="kfp", pipeline="p", principal="system:serviceaccount:ml:pipeline-a"),
                  RunIdentity(orchestrator="kfp", pipeline="system:serviceaccount:ml:pipeline-a")):
        assert not policy.allows(claim, path, Capability.LEASE)
    # A proof by another method (a verified Airflow task instance) is not a workload.
    ti = Verification(method="airflow-execution-api", subject="system:serviceaccount:ml:pipeline-a",
                      fields=("pipeline",))
    assert not policy.allows(RunIdentity(orchestrator="kfp", pipeline="p", verification=ti), path, Capability.LEASE)


def test_require_verified_grant_ignores_a_claimed_pipeline(tmp_path):
    from runlease.models import Capability, RunIdentity, SecretPath, Verification
    policy = _verified_policy(tmp_path)
    path = SecretPath.parse("prod/connections/b")
    claimed = RunIdentity(orchestrator="airflow", pipeline="dag_b", task_id="t")
    assert not policy.allows(claimed, path, Capability.LEASE)
    proof = Verification(method="airflow-execution-api", subject="0190-ti", fields=("pipeline", "run_id", "task_id"))
    proven = RunIdentity(orchestrator="airflow", pipeline="dag_b", task_id="t", verification=proof)
    assert proven.is_verified("pipeline") and not proven.is_verified("try_number")
    assert policy.allows(proven, path, Capability.LEASE)


def test_grant_without_principals_or_workloads_is_refused(tmp_path):
    import pytest as _pytest
    from runlease.errors import ConfigError
    from runlease.policy.grants import Policy
    f = tmp_path / "policy.toml"
    f.write_text('[[grant]]\nenvironments = ["prod"]\npaths = ["connections/a"]\ncapabilities = ["lease"]\n')
    with _pytest.raises(ConfigError, match="principals' or 'workloads"):
        Policy.load(f)


def test_audit_event_records_which_fields_were_verified():
    from runlease.models import AuditEvent, RunIdentity, Verification
    proof = Verification(method="airflow-execution-api", subject="0190-ti", fields=("pipeline", "task_id"))
    ev = AuditEvent.for_identity(RunIdentity(orchestrator="airflow", pipeline="d", task_id="t", verification=proof),
                                 action="lease", detail={"ttl": 60})
    assert ev.detail["ttl"] == 60
    assert ev.detail["verified"] == {"method": "airflow-execution-api", "subject": "0190-ti",
                                     "fields": ["pipeline", "task_id"]}
    assert "verified" not in AuditEvent.for_identity(RunIdentity(orchestrator="a", pipeline="d"), action="x").detail
