"""The rotation state machine on the embedded store, driven through the ``token`` rotator.

What is proven here holds for every rotator (the engine is the same): the
stage dance and what verification accepts at each point, the rotation
token as idempotency key, one rotation per secret at a time (also under a
real race between processes' connections), the grace period, an
abandoned rotation when CURRENT moves underneath, audit events per step,
and that no value reaches the state, the audit trail or an error.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from runlease.errors import ConfigError, ConflictError
from runlease.ledger.base import AuditQuery
from runlease.models import Outcome, Stage, utcnow
from runlease.rotation import (
    RotationBusyError,
    RotationEngine,
    RotationFailedError,
    RotationNotReadyError,
    RotationTestFailed,
    Status,
    Step,
)
from runlease.rotation.rotators import RotatorRegistry
from runlease.rotation.rotators.token import TokenRotator
from runlease.rotation.status import scan
from runlease.runtime import open_runtime
from runlease.settings import Settings
from support.homes import make_runtime, raw_files

from rotation_support import ADMIN, leaks, set_policy, token_target, trail_text, values_of


@pytest.fixture
def rt(tmp_path: Path):
    runtime = make_runtime(tmp_path / "home")
    yield runtime
    runtime.close()


def stages(rt, path) -> dict[Stage, int]:
    return rt.store.info(path).stages


def test_a_rotation_keeps_old_keys_working_until_retire(rt) -> None:
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    old = rt.store.get(target.path).value
    state = engine.start(target.path, ADMIN)
    state = engine.run_step(target.path, ADMIN, Step.CREATE, state.token)
    new = rt.store.get(target.path, stage=Stage.PENDING).value
    assert stages(rt, target.path) == {Stage.CURRENT: 1, Stage.PENDING: 2}
    assert target.works(old) and not target.works(new)  # PENDING is never accepted
    for step in (Step.SET, Step.TEST, Step.FINISH):
        state = engine.run_step(target.path, ADMIN, step, state.token)
    assert state.status is Status.GRACE and (state.pending_version, state.previous_version) == (2, 1)
    assert stages(rt, target.path) == {Stage.CURRENT: 2, Stage.PREVIOUS: 1}
    assert target.works(old) and target.works(new)  # grace: both
    state = engine.retire(target.path, ADMIN)
    assert state is not None and state.status is Status.DONE
    assert stages(rt, target.path) == {Stage.CURRENT: 2}
    assert not target.works(old) and target.works(new)
    assert [v.deprecated for v in rt.store.history(target.path)] == [True, False]


def test_the_token_is_the_idempotency_key(rt) -> None:
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    first = engine.start(target.path, ADMIN, token="req-1")
    assert engine.start(target.path, ADMIN, token="req-1") == first  # same request: same claim
    engine.run_step(target.path, ADMIN, Step.CREATE, "req-1")
    engine.run_step(target.path, ADMIN, Step.CREATE, "req-1")  # re-run after a crash: no second PENDING
    assert len(rt.store.history(target.path)) == 2
    done = engine.rotate(target.path, ADMIN, token="req-1")
    assert done.status is Status.GRACE
    assert engine.rotate(target.path, ADMIN, token="req-1") == done  # finished: same answer, nothing new
    assert len(rt.store.history(target.path)) == 2
    with pytest.raises(RotationBusyError, match="not the one running"):
        engine.run_step(target.path, ADMIN, Step.SET, "req-other")


def test_only_one_rotation_per_secret(rt) -> None:
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    running = engine.start(target.path, ADMIN)
    with pytest.raises(RotationBusyError, match=f"being rotated by token {running.token}"):
        engine.start(target.path, ADMIN, token="someone-else")
    with pytest.raises(ConflictError, match="run create before test"):
        engine.run_step(target.path, ADMIN, Step.TEST, running.token)
    assert engine.start(target.path, ADMIN) == running  # no token: resume the running one


def test_concurrent_claims_from_separate_connections_have_one_winner(rt, tmp_path: Path) -> None:
    """Four claimers with their own runtimes (own SQLite connections) race: exactly one claim sticks."""
    target = token_target(rt)
    barrier = threading.Barrier(4)
    outcomes: dict[str, str] = {}

    def claim(name: str) -> None:
        own = open_runtime(Settings(home=tmp_path / "home"))
        try:
            barrier.wait(timeout=30)
            RotationEngine(own.broker).start(target.path, ADMIN, token=name)
            outcomes[name] = "claimed"
        except RotationBusyError:
            outcomes[name] = "busy"
        finally:
            own.close()

    threads = [threading.Thread(target=claim, args=(f"claimer-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes.values()) == ["busy", "busy", "busy", "claimed"]
    winner = next(n for n, o in outcomes.items() if o == "claimed")
    assert RotationEngine(rt.broker).state(target.path).token == winner
    starts = [e for e in rt.ledger.events(AuditQuery(action="rotate")) if e.detail["step"] == "start"]
    assert [e.detail["token"] for e in starts] == [winner]


def test_a_new_rotation_waits_for_the_grace_period_or_forces_it_to_end(rt) -> None:
    target = token_target(rt, grace_s=3600)
    engine = RotationEngine(rt.broker)
    first = engine.rotate(target.path, ADMIN)
    old = rt.store.get(target.path, version=1).value
    with pytest.raises(RotationNotReadyError, match="grace period until"):
        engine.rotate(target.path, ADMIN)
    with pytest.raises(RotationNotReadyError):
        engine.retire(target.path, ADMIN)
    assert target.works(old)
    second = engine.rotate(target.path, ADMIN, force=True)
    assert not target.works(old)  # forcing retired it early
    assert second.base_version == 2 and second.token != first.token
    retire = [e for e in rt.ledger.events(AuditQuery(action="rotate")) if e.detail["step"] == "retire"]
    assert [(e.version, e.detail["forced"]) for e in retire] == [(1, True)]
    later = RotationEngine(rt.broker, clock=lambda: utcnow() + timedelta(hours=2))
    assert later.retire(target.path, ADMIN).status is Status.DONE  # grace over: no force needed


def test_a_new_current_written_during_a_rotation_abandons_it(rt) -> None:
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    state = engine.start(target.path, ADMIN)
    engine.run_step(target.path, ADMIN, Step.CREATE, state.token)
    operator_value = "rk_operator-wrote-this-one-by-hand-0000000000"
    rt.broker.put(target.path, operator_value, ADMIN)  # v3 CURRENT, behind the rotation's back
    with pytest.raises(RotationFailedError, match="CURRENT of .* moved from v1 to v3"):
        engine.run_step(target.path, ADMIN, Step.SET, state.token)
    failed = engine.state(target.path)
    assert failed.status is Status.FAILED and "abandoned" in failed.reason
    assert rt.store.get(target.path).value == operator_value  # the operator's write stands
    assert Stage.PENDING not in stages(rt, target.path)
    assert rt.store.history(target.path)[1].deprecated  # the staged v2
    with pytest.raises(RotationFailedError):
        engine.run_step(target.path, ADMIN, Step.SET, state.token)
    assert engine.rotate(target.path, ADMIN).status is Status.GRACE  # a new rotation starts cleanly


def test_every_step_is_audited_with_token_and_rotator_and_the_chain_verifies(rt) -> None:
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    state = engine.rotate(target.path, ADMIN)
    engine.retire(target.path, ADMIN)
    events = list(rt.ledger.events(AuditQuery(action="rotate", path=str(target.path))))
    assert [(e.detail["step"], e.version, e.outcome) for e in events] == [
        ("start", 1, Outcome.OK), ("create", 2, Outcome.OK), ("set", 2, Outcome.OK), ("test", 2, Outcome.OK),
        ("finish", 2, Outcome.OK), ("retire", 1, Outcome.OK)]
    assert {(e.detail["token"], e.detail["rotator"], e.principal) for e in events} == {
        (state.token, "token", "cli:tests")}
    assert rt.ledger.verify().ok


def test_no_value_in_state_audit_logs_or_store_files(rt, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    for _ in range(2):
        engine.rotate(target.path, ADMIN)
        engine.retire(target.path, ADMIN)
    state = engine.start(target.path, ADMIN)
    engine.run_step(target.path, ADMIN, Step.CREATE, state.token)
    rt.broker.put(target.path, "rk_manual-" + "x" * 40, ADMIN)
    with pytest.raises(RotationFailedError) as failure:
        engine.run_step(target.path, ADMIN, Step.SET, state.token)
    values = values_of(rt, target.path)
    assert len(values) == 5
    assert leaks(values, trail_text(rt), caplog.text, str(failure.value)) == []
    assert leaks(values, raw_files(tmp_path / "home").decode("latin-1")) == []  # only ciphertext on disk


def test_policy_problems_are_clear_and_name_the_secret(rt) -> None:
    target = token_target(rt)
    engine = RotationEngine(rt.broker)
    rt.store.update_metadata(target.path, {"rotation": None})
    with pytest.raises(ConfigError, match=f"{target.path} has no rotation policy"):
        engine.rotate(target.path, ADMIN)
    set_policy(rt, target.path, "no-such-rotator")
    with pytest.raises(ConfigError, match="unknown rotator 'no-such-rotator'"):
        engine.rotate(target.path, ADMIN)
    set_policy(rt, target.path, "token", length=4)
    with pytest.raises(ConfigError, match="rotation settings of dev/tokens/client_key for rotator 'token': length"):
        engine.rotate(target.path, ADMIN)


def test_status_says_when_each_secret_is_due_and_retirable(rt) -> None:
    fresh, rotated = token_target(rt, "fresh"), token_target(rt, "rotated", grace_s=600)
    engine = RotationEngine(rt.broker)
    engine.rotate(rotated.path, ADMIN)
    now = utcnow()
    rows = {str(r.path): r for r in scan(rt.store, "dev/")}
    assert set(rows) == {str(fresh.path), str(rotated.path)}
    assert not rows[str(fresh.path)].is_due(now) and rows[str(fresh.path)].is_due(now + timedelta(days=31))
    assert rows[str(fresh.path)].last_result() == "never rotated"
    in_grace = rows[str(rotated.path)]
    assert in_grace.due_at() is None and not in_grace.is_retirable(now)
    assert in_grace.is_retirable(now + timedelta(minutes=11))
    assert in_grace.last_result() == "ok, PREVIOUS v1 in grace"
    state = engine.start(fresh.path, ADMIN)
    interrupted = {str(r.path): r for r in scan(rt.store)}[str(fresh.path)]
    assert interrupted.is_due(utcnow()) and interrupted.last_result() == "rotating (after start)"
    assert state.status is Status.ROTATING


class RefusingRotator(TokenRotator):
    """The token rotator, except that its target refuses every new key (a verdict, not an outage)."""

    name = "refusing"

    def test(self, ctx, pending, current) -> None:  # noqa: ANN001
        raise RotationTestFailed(f"the target refused PENDING v{pending.version}")


def test_a_failed_test_inside_a_grouped_commit_is_still_recorded(rt) -> None:
    """``rotate`` commits offline steps together; a verdict must commit the failure, not roll it back."""
    target = token_target(rt)
    set_policy(rt, target.path, "refusing", prefix="rk_")
    engine = RotationEngine(rt.broker, RotatorRegistry([RefusingRotator()]))
    current = rt.store.get(target.path).value
    with pytest.raises(RotationTestFailed, match="the target refused PENDING v2.*CURRENT v1 is unchanged"):
        engine.rotate(target.path, ADMIN)
    state = engine.state(target.path)
    assert state.status is Status.FAILED and state.reason == "the target refused PENDING v2"
    assert stages(rt, target.path) == {Stage.CURRENT: 1}
    assert rt.store.history(target.path)[1].deprecated
    assert target.works(current)
    steps = [(e.detail["step"], e.outcome) for e in rt.ledger.events(AuditQuery(action="rotate"))]
    assert steps == [("start", Outcome.OK), ("create", Outcome.OK), ("set", Outcome.OK), ("test", Outcome.ERROR)]
