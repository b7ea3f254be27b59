"""The rotation engine: a resumable, idempotent state machine per secret.

``create`` (stage a new version PENDING) -> ``set`` (apply it to the target)
-> ``test`` (authenticate with it) -> ``finish`` (PENDING becomes CURRENT, the
old CURRENT becomes PREVIOUS) -> after the grace period, ``retire`` (disable
PREVIOUS in the target, deprecate the version). The engine does the
runlease half of each step; a :mod:`rotator <runlease.rotation.rotators>`
does the target half.

**Crash safety.** Each step is: (1) check the state record says this token
and the step before; (2) the rotator's target effect, written to be safe to
repeat; (3) one commit of the store effect (stage moves, the new version),
the new state record (a compare-and-swap, see :mod:`runlease.rotation.state`)
and the step's audit event. On the local store with the local ledger, (3)
is one SQLite transaction, so a crash leaves either the whole step or none
of it. Elsewhere the pieces are separate calls, and every one of them is
written to be re-run: stage moves are computed from where the labels are
now, and a PENDING version above the claim's ``high_version`` is adopted
instead of creating a second one.

**The token is the idempotency key** (AWS ClientRequestToken semantics):
starting with a token that is already running resumes it, starting with a
token whose rotation ended returns that outcome, and ``create`` under a
token never stages a second PENDING version.

**One rotation at a time, and one credential in grace at a time.** A new
rotation cannot start while another holds the claim, nor while the previous
one's PREVIOUS is still in its grace period: ``finish`` would take the
PREVIOUS label away from it (and the postgres rotator's ``set`` would change
its password) before its grace ran out. ``force`` retires it early instead.

**Failures.** A failed ``test`` leaves CURRENT untouched: PENDING is
discarded in the target and in runlease (label removed, version
deprecated) and the state says ``failed`` with the reason. Any other error
(an unreachable target) leaves the state where it was: the step can be
retried. Reasons are scrubbed of every value involved before they are
stored or raised.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from runlease.broker import Broker, secret_strings
from runlease.errors import ConfigError, ConflictError, IntegrityError, SecretNotFoundError, scrub
from runlease.models import AuditEvent, Capability, Outcome, RunIdentity, SecretPath, Stage, utcnow
from runlease.rotation.errors import RotationBusyError, RotationFailedError, RotationNotReadyError, RotationTestFailed
from runlease.rotation.policy import RotationPolicy, policy_of
from runlease.rotation.rotators import RotationContext, Rotator, RotatorRegistry, standard_rotators
from runlease.rotation.state import STATE_KEY, RotationState, Status, Step, state_of
from runlease.integrity.rowauth import RowKeyNotLoadedError
from runlease.store.base import StoredSecret

#: Longest failure reason kept in the state record (the audit event has the same text).
MAX_REASON = 300

#: ``after(point, step)`` is called after a step's target effect (``"effect"``), after its
#: store effect inside the commit (``"store"``: create, finish, retire) and after the commit
#: (``"commit"``). Tests use it to kill the process at exactly those points.
AfterHook = Callable[[str, Step], None]


def new_token() -> str:
    """A fresh rotation token: 128 random bits, hex (safe in AWS ClientRequestTokens and role names)."""
    return uuid.uuid4().hex


class RotationEngine:
    """Runs rotations through the broker's store and ledger, with the broker's policy."""

    def __init__(self, broker: Broker, rotators: RotatorRegistry | None = None, *,
                 clock: Callable[[], datetime] = utcnow, after: AfterHook | None = None) -> None:
        self.broker = broker
        self.store = broker.store
        self.ledger = broker.ledger
        self.rotators = rotators or standard_rotators()
        self.clock = clock
        self.after = after

    # -- reading ----------------------------------------------------------------

    @staticmethod
    def _path(ref: str | SecretPath) -> SecretPath:
        return ref if isinstance(ref, SecretPath) else SecretPath.parse(ref)

    def _load(self, path: SecretPath) -> tuple[RotationPolicy, RotationState | None, Any, int]:
        """Policy, state, the raw state record (what a swap expects) and where CURRENT is: one store read."""
        resolved = self.store.resolve(path)
        policy = policy_of(path, resolved.metadata)
        if policy is None:
            raise ConfigError(f"{path} has no rotation policy; set one with `runlease rotation set {path} ...`")
        state, raw = state_of(path, resolved.metadata)
        return policy, state, raw, resolved.version

    def state(self, ref: str | SecretPath) -> RotationState | None:
        path = self._path(ref)
        return state_of(path, self.store.resolve(path).metadata)[0]

    def grace_over(self, policy: RotationPolicy, state: RotationState) -> bool:
        return state.finished_at is not None and self.clock() >= state.finished_at + policy.grace

    # -- plumbing ---------------------------------------------------------------

    def _authorize(self, identity: RunIdentity, path: SecretPath) -> None:
        self.broker.authorize(identity, path, Capability.ROTATE, "rotate")

    def _hook(self, point: str, step: Step) -> None:
        if self.after is not None:
            self.after(point, step)

    def _event(self, identity: RunIdentity, path: SecretPath, step: str, state: RotationState, *,
               version: int | None = None, outcome: Outcome = Outcome.OK, **extra: Any) -> AuditEvent:
        detail: dict[str, Any] = {"step": step, "token": state.token, "rotator": state.rotator, **extra}
        return AuditEvent.for_identity(identity, action="rotate", outcome=outcome, path=str(path),
                                       version=version, detail=detail)

    def _commit(self, path: SecretPath, raw_old: Any,
                build: Callable[[], tuple[RotationState, AuditEvent]]) -> RotationState:
        """Store effect, state swap and audit event in one ledger transaction (one SQLite tx locally)."""
        with self.ledger.atomic():
            new, event = build()
            self.store.update_metadata(path, {STATE_KEY: new.to_raw()}, expected={STATE_KEY: raw_old})
            self.ledger.append(event)
        return new

    def _context(self, path: SecretPath, policy: RotationPolicy, state: RotationState,
                 identity: RunIdentity) -> RotationContext:
        def read_secret(ref: str) -> StoredSecret:
            other = SecretPath.parse(ref)
            return self.broker.read(other, identity, kind=other.kind,
                                    detail={"via": "rotation", "rotating": str(path), "token": state.token})

        def note(effect: str, facts: dict[str, Any]) -> None:
            self.ledger.append(self._event(identity, path, "effect", state, effect=effect, **facts))

        return RotationContext(path=path, policy=policy, token=state.token, started_at=state.started_at,
                               read_secret=read_secret, note=note)

    def _version(self, path: SecretPath, version: int) -> StoredSecret:
        """A version's value through the broker's cache (versions are immutable: cached by number)."""
        secret = self.broker.cache.get(path, Stage.CURRENT, version)
        self.broker.mask(secret.value)
        return secret

    def _holder(self, path: SecretPath, stage: Stage) -> int | None:
        try:
            return self.store.resolve(path, stage).version
        except SecretNotFoundError:
            return None

    def _deprecate(self, path: SecretPath, version: int) -> None:
        deprecate = getattr(self.store, "deprecate", None)  # AWS/Vault: a version with no label is deprecated
        if deprecate is not None:
            deprecate(path, version)

    @staticmethod
    def _scrub(text: str, *values: StoredSecret | None) -> str:
        found = [s for v in values if v is not None for s in secret_strings(v.value)]
        text = scrub(text, *found)
        return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."

    def _rotator(self, state: RotationState) -> Rotator:
        return self.rotators.get(state.rotator)

    # -- tampering ----------------------------------------------------------------

    @contextmanager
    def _tampering_audited(self, identity: RunIdentity, path: SecretPath, step: str) -> Iterator[None]:
        """A row that fails authentication during a rotation is audited twice: as tampering
        (``broker.report_tampering``: table and row) and as this step's rotate error.

        Done here, outside the step's own transaction, so the events are not rolled
        back with it. Inside a grouped transaction (``rotate``), events appended by an
        inner step go with the group's rollback; :class:`_Group` then clears the mark
        and the outer ``rotate`` audits it again, naming the step that hit it.
        """
        try:
            yield
        except (IntegrityError, RowKeyNotLoadedError) as err:
            if not getattr(err, "audited", False):
                step = getattr(err, "rotate_step", step)
                self.ledger.append(AuditEvent.for_identity(
                    identity, action="rotate", outcome=Outcome.ERROR, path=str(path),
                    detail={"step": step, "error": type(err).__name__, "tampered": True}))
                self.broker.report_tampering(err, "rotate", identity, path=str(path))
            err.rotate_step = getattr(err, "rotate_step", step)  # type: ignore[union-attr]
            raise

    def start(self, ref: str | SecretPath, identity: RunIdentity, token: str | None = None, *,
              force: bool = False) -> RotationState:
        """Claim the secret for a rotation under ``token`` (new if None), or resume the running one.

        Raises RotationBusyError if another token holds the claim, and
        RotationNotReadyError while the previous rotation is in its grace
        period (unless ``force``, which retires it now).
        """
        path = self._path(ref)
        with self._tampering_audited(identity, path, "start"):
            return self._start(path, identity, token, force=force)

    def run_step(self, ref: str | SecretPath, identity: RunIdentity, step: Step, token: str) -> RotationState:
        """Run one step of rotation ``token``; a step that already completed is a no-op."""
        path = self._path(ref)
        with self._tampering_audited(identity, path, step.value):
            return self._run_step(path, identity, step, token)

    def retire(self, ref: str | SecretPath, identity: RunIdentity, *, force: bool = False,
               token: str | None = None) -> RotationState | None:
        """Disable PREVIOUS in the target and drop its label once the grace period is over (see ``_retire``)."""
        path = self._path(ref)
        with self._tampering_audited(identity, path, Step.RETIRE.value):
            return self._retire(path, identity, force=force, token=token)

    def rotate(self, ref: str | SecretPath, identity: RunIdentity, token: str | None = None, *,
               force: bool = False) -> RotationState:
        """Start (or resume) a rotation and run it through ``finish`` (see ``_rotate``)."""
        path = self._path(ref)
        with self._tampering_audited(identity, path, "rotate"):
            return self._rotate(path, identity, token, force=force)

    # -- starting ---------------------------------------------------------------

    def _start(self, ref: str | SecretPath, identity: RunIdentity, token: str | None = None, *,
               force: bool = False) -> RotationState:
        path = self._path(ref)
        self._authorize(identity, path)
        for _ in range(3):  # a lost claim race re-reads once or twice, then reports who won
            policy, state, raw, base = self._load(path)
            if state is not None:
                if state.status is Status.ROTATING:
                    if token in (None, state.token):
                        return state
                    raise RotationBusyError(
                        f"{path} is being rotated by token {state.token} (last step: {_step(state)}); "
                        "only one rotation per secret runs at a time"
                    )
                if token is not None and state.token == token:
                    return state  # this token's rotation already ended: the same request gets the same answer
                if state.status is Status.GRACE:
                    if not (force or self.grace_over(policy, state)):
                        raise RotationNotReadyError(
                            f"{path}: the previous rotation's PREVIOUS v{state.previous_version} is in its grace "
                            f"period until {_until(policy, state)}; retire it first (or force)"
                        )
                    self.retire(path, identity, force=True)
                    continue
            rotator = self.rotators.get(policy.rotator)
            high = max(v.version for v in self.store.history(path))
            now = self.clock()
            new = RotationState(token=token or new_token(), rotator=rotator.name, status=Status.ROTATING,
                                started_at=now, updated_at=now, base_version=base, high_version=high)
            try:
                return self._commit(path, raw, lambda: (new, self._event(identity, path, "start", new, version=base)))
            except ConflictError:
                continue
        raise RotationBusyError(f"{path}: could not claim the secret for rotation; others kept changing its state")

    # -- the steps --------------------------------------------------------------

    def _run_step(self, ref: str | SecretPath, identity: RunIdentity, step: Step, token: str) -> RotationState:
        path = self._path(ref)
        if step is Step.RETIRE:
            return self.retire(path, identity, token=token)
        self._authorize(identity, path)
        policy, state, raw, current = self._load(path)
        if state is None or state.token != token:
            holder = f"token {state.token}" if state is not None else "no rotation"
            raise RotationBusyError(f"rotation {token} of {path} is not the one running ({holder})")
        if state.status is Status.FAILED:
            raise RotationFailedError(f"rotation {token} of {path} failed: {state.reason}")
        if state.done(step):
            return state
        expected = state.next_step()
        if expected is not step:
            wanted = expected.value if expected is not None else "nothing"
            raise ConflictError(f"rotation {token} of {path} is after {_step(state)}: run {wanted} before {step.value}")
        rotator = self._rotator(state)
        ctx = self._context(path, policy, state, identity)
        handler = {Step.CREATE: self._create, Step.SET: self._set, Step.TEST: self._test,
                   Step.FINISH: self._finish}[step]
        try:
            self._check_current(path, ctx, rotator, state, raw, identity, step, current)
            new = handler(path, ctx, rotator, state, raw, identity)
        except ConflictError:
            # Lost the state swap: another process ran this step of the same token (fine) or took over.
            _, now_state, _, _ = self._load(path)
            if now_state is not None and now_state.token == token and now_state.done(step):
                return now_state
            raise
        except (RotationTestFailed, RotationFailedError, ConfigError, IntegrityError, RowKeyNotLoadedError):
            raise  # a verdict, or tampering (audited by run_step's wrapper)
        except Exception as err:
            self.ledger.append(self._event(identity, path, step.value, state, outcome=Outcome.ERROR,
                                           error=type(err).__name__))
            raise
        self._hook("commit", step)
        return new

    def _check_current(self, path: SecretPath, ctx: RotationContext, rotator: Rotator, state: RotationState,
                       raw: Any, identity: RunIdentity, step: Step, holder: int | None) -> None:
        """Abandon the rotation if someone wrote a new CURRENT meanwhile (finish would overwrite it)."""
        if holder is not None and holder in (state.base_version, state.pending_version):
            return
        reason = (f"CURRENT of {path} moved from v{state.base_version} to v{holder} during the rotation "
                  "(a new version was written); the rotation was abandoned")
        self._fail(path, ctx, rotator, state, raw, identity, step, reason)
        raise RotationFailedError(f"rotation {state.token} of {path} failed: {reason}")

    def _pending_and_current(self, path: SecretPath, state: RotationState) -> tuple[StoredSecret, StoredSecret]:
        assert state.pending_version is not None
        # The state record, not the label, says which version this rotation staged: put the label
        # back if a concurrent writer (a zombie retry on a remote store) moved it.
        holder = self._holder(path, Stage.PENDING)
        if holder != state.pending_version:
            self.store.move_stage(path, Stage.PENDING, state.pending_version, expected=holder)
        return self._version(path, state.pending_version), self._version(path, state.base_version)

    def _create(self, path: SecretPath, ctx: RotationContext, rotator: Rotator, state: RotationState, raw: Any,
                identity: RunIdentity) -> RotationState:
        current = self._version(path, state.base_version)
        # A PENDING above the claim's high-water mark was staged by this token before a crash: adopt it.
        holder = self._holder(path, Stage.PENDING)
        adopted = holder if holder is not None and holder > state.high_version else None
        value = None
        if adopted is None:
            value = rotator.create(ctx, current)
            self.broker.mask(value)
            self._hook("effect", Step.CREATE)

        def build() -> tuple[RotationState, AuditEvent]:
            if adopted is not None:
                version = adopted
            else:
                assert value is not None
                version = self.store.put(path, value, stage=Stage.PENDING)
            self._hook("store", Step.CREATE)
            new = state.model_copy(update={"step": Step.CREATE, "pending_version": version,
                                           "updated_at": self.clock()})
            extra = {"adopted": True} if adopted is not None else {}
            return new, self._event(identity, path, Step.CREATE.value, new, version=version, **extra)

        return self._commit(path, raw, build)

    def _set(self, path: SecretPath, ctx: RotationContext, rotator: Rotator, state: RotationState, raw: Any,
             identity: RunIdentity) -> RotationState:
        pending, current = self._pending_and_current(path, state)
        rotator.set(ctx, pending, current)
        self._hook("effect", Step.SET)
        new = state.model_copy(update={"step": Step.SET, "updated_at": self.clock()})
        return self._commit(path, raw, lambda: (new, self._event(identity, path, Step.SET.value, new,
                                                                   version=pending.version)))

    def _test(self, path: SecretPath, ctx: RotationContext, rotator: Rotator, state: RotationState, raw: Any,
              identity: RunIdentity) -> RotationState:
        pending, current = self._pending_and_current(path, state)
        try:
            rotator.test(ctx, pending, current)
        except RotationTestFailed as verdict:
            reason = self._scrub(str(verdict), pending, current)
            self._fail(path, ctx, rotator, state, raw, identity, Step.TEST, reason, pending, current)
            raise RotationTestFailed(
                f"rotation {state.token} of {path}: test failed: {reason}; CURRENT v{state.base_version} "
                f"is unchanged and PENDING v{pending.version} was discarded"
            ) from None
        self._hook("effect", Step.TEST)
        new = state.model_copy(update={"step": Step.TEST, "updated_at": self.clock()})
        return self._commit(path, raw, lambda: (new, self._event(identity, path, Step.TEST.value, new,
                                                                   version=pending.version)))

    def _finish(self, path: SecretPath, ctx: RotationContext, rotator: Rotator, state: RotationState, raw: Any,
                identity: RunIdentity) -> RotationState:
        pending, current = self._pending_and_current(path, state)
        rotator.finish(ctx, pending, current)
        self._hook("effect", Step.FINISH)

        def build() -> tuple[RotationState, AuditEvent]:
            # Computed from where the labels are now, so a half-done finish (remote store) completes.
            if self._holder(path, Stage.CURRENT) == state.base_version:
                if self._holder(path, Stage.PREVIOUS) != state.base_version:
                    self.store.move_stage(path, Stage.PREVIOUS, state.base_version)
                self.store.move_stage(path, Stage.CURRENT, pending.version, expected=state.base_version)
            elif self._holder(path, Stage.PREVIOUS) != state.base_version:
                self.store.move_stage(path, Stage.PREVIOUS, state.base_version)
            holder = self._holder(path, Stage.PENDING)
            if holder == pending.version:
                self.store.move_stage(path, Stage.PENDING, None, expected=holder)
            self._hook("store", Step.FINISH)
            now = self.clock()
            new = state.model_copy(update={"status": Status.GRACE, "step": Step.FINISH, "finished_at": now,
                                           "previous_version": state.base_version, "updated_at": now})
            return new, self._event(identity, path, Step.FINISH.value, new, version=pending.version,
                                    previous=state.base_version, grace_s=ctx.policy.grace_s)

        return self._commit(path, raw, build)

    def _fail(self, path: SecretPath, ctx: RotationContext, rotator: Rotator, state: RotationState, raw: Any,
              identity: RunIdentity, step: Step, reason: str, pending: StoredSecret | None = None,
              current: StoredSecret | None = None) -> RotationState:
        """Discard PENDING in the target and in runlease, and record why the rotation failed."""
        if state.pending_version is not None:
            pending = pending or self._version(path, state.pending_version)
            current = current or self._version(path, state.base_version)
            try:
                rotator.discard(ctx, pending, current)
            except Exception as err:  # noqa: BLE001 - the failure is still recorded; the reason says so
                detail = self._scrub(str(err), pending, current)
                reason = self._scrub(f"{reason}; discarding PENDING in the target failed ({type(err).__name__}: "
                                     f"{detail})")

        def build() -> tuple[RotationState, AuditEvent]:
            if state.pending_version is not None:
                holder = self._holder(path, Stage.PENDING)
                if holder == state.pending_version:
                    self.store.move_stage(path, Stage.PENDING, None, expected=holder)
                self._deprecate(path, state.pending_version)
            new = state.model_copy(update={"status": Status.FAILED, "reason": reason, "updated_at": self.clock()})
            return new, self._event(identity, path, step.value, new, version=state.pending_version,
                                    outcome=Outcome.ERROR, reason=reason)

        return self._commit(path, raw, build)

    # -- retiring ---------------------------------------------------------------

    def _retire(self, ref: str | SecretPath, identity: RunIdentity, *, force: bool = False,
                token: str | None = None) -> RotationState | None:
        """Disable PREVIOUS in the target and drop its label once the grace period is over.

        Idempotent: a secret with nothing in grace is returned as it is.
        ``force`` ends the grace period now.
        """
        path = self._path(ref)
        self._authorize(identity, path)
        policy, state, raw, current_version = self._load(path)
        if state is None or state.status is not Status.GRACE:
            return state
        if token is not None and state.token != token:
            raise RotationBusyError(f"rotation {token} of {path} is not the one in grace ({state.token})")
        if not (force or self.grace_over(policy, state)):
            raise RotationNotReadyError(f"{path}: PREVIOUS v{state.previous_version} is in its grace period until "
                                        f"{_until(policy, state)}")
        assert state.previous_version is not None
        rotator = self._rotator(state)
        ctx = self._context(path, policy, state, identity)
        previous = self._version(path, state.previous_version)
        current = self._version(path, current_version)
        try:
            rotator.retire(ctx, previous, current)
        except (ConfigError, RotationFailedError):
            raise
        except Exception as err:
            self.ledger.append(self._event(identity, path, Step.RETIRE.value, state, outcome=Outcome.ERROR,
                                           version=previous.version, error=type(err).__name__))
            raise
        self._hook("effect", Step.RETIRE)

        def build() -> tuple[RotationState, AuditEvent]:
            holder = self._holder(path, Stage.PREVIOUS)
            if holder == previous.version:
                self.store.move_stage(path, Stage.PREVIOUS, None, expected=holder)
            self._deprecate(path, previous.version)
            self._hook("store", Step.RETIRE)
            now = self.clock()
            new = state.model_copy(update={"status": Status.DONE, "step": Step.RETIRE, "retired_at": now,
                                           "updated_at": now})
            return new, self._event(identity, path, Step.RETIRE.value, new, version=previous.version,
                                    forced=force and not self.grace_over(policy, state))

        try:
            new = self._commit(path, raw, build)
        except ConflictError:
            _, now_state, _, _ = self._load(path)
            if now_state is not None and now_state.token == state.token and now_state.status is Status.DONE:
                return now_state
            raise
        self._hook("commit", Step.RETIRE)
        return new

    # -- the whole thing --------------------------------------------------------

    def _rotate(self, ref: str | SecretPath, identity: RunIdentity, token: str | None = None, *,
                force: bool = False) -> RotationState:
        """Start (or resume) a rotation and run it through ``finish``. Retire comes after the grace period.

        Consecutive steps whose rotator work never leaves runlease (the
        rotator's ``offline_steps``: all of the token rotator's, the postgres
        rotator's create and finish) commit together when the store's writes
        join the ledger's transaction (the local store with the local
        ledger): fewer durable commits, and a crash inside the group rolls it
        back to where it began, from where it resumes. A step that touches
        the target always commits on its own, and never runs inside a store
        transaction. ``run_step`` (what the DAG's tasks call) commits every
        step on its own.
        """
        path = self._path(ref)
        policy, state, _, _ = self._load(path)
        if (state is not None and state.status is Status.GRACE and token != state.token
                and (force or self.grace_over(policy, state))):
            self.retire(path, identity, force=True)  # touches the target: before any grouped transaction
        offline = self._groupable(policy)
        with self._group(Step.CREATE in offline) as group:
            state = self.start(path, identity, token, force=force)
            if state.next_step() in offline:
                state = group.run(self._run_offline, path, identity, state, offline)
        group.reraise()
        while (step := state.next_step()) is not None:
            if step not in offline:
                state = self.run_step(path, identity, step, state.token)
                continue
            with self._group(True) as group:
                state = group.run(self._run_offline, path, identity, state, offline)
            group.reraise()
        return state

    def _groupable(self, policy: RotationPolicy) -> frozenset[Step]:
        """The steps ``rotate`` may commit together: the rotator's offline steps, if one commit covers all."""
        from runlease.ledger.sqlite import SqliteLedger
        from runlease.store.local import LocalStore

        shared = (isinstance(self.store, LocalStore) and isinstance(self.ledger, SqliteLedger)
                  and self.store.db is self.ledger.db)
        return frozenset(getattr(self.rotators.get(policy.rotator), "offline_steps", ())) if shared else frozenset()

    def _group(self, grouped: bool) -> "_Group":
        return _Group(self.ledger if grouped else None)

    def _run_offline(self, path: SecretPath, identity: RunIdentity, state: RotationState,
                     offline: frozenset[Step]) -> RotationState:
        while (step := state.next_step()) is not None and step in offline:
            state = self.run_step(path, identity, step, state.token)
        return state


class _Group:
    """One transaction around several steps; a verdict (failed test, abandoned rotation) still commits.

    ``_fail`` records the failure inside the group's transaction; rolling that
    back would lose the "failed, PENDING discarded" record. So :meth:`run`
    holds a verdict, the transaction commits, and :meth:`reraise` raises it
    afterwards. Any other error rolls the group back (it resumes from where
    it began). Without a ledger (not grouped) everything raises at once.
    """

    def __init__(self, ledger: Any | None) -> None:
        self._cm = ledger.atomic() if ledger is not None else None
        self.verdict: Exception | None = None

    def __enter__(self) -> "_Group":
        if self._cm is not None:
            self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        if self._cm is not None:
            result = self._cm.__exit__(*exc)
            if isinstance(exc[1], (IntegrityError, RowKeyNotLoadedError)):
                # What an inner step audited about it went with the rollback: audit it again outside.
                exc[1].audited = False  # type: ignore[union-attr]
            return result
        return None

    def run(self, fn: Callable[..., RotationState], *args: Any) -> RotationState:
        try:
            return fn(*args)
        except (RotationTestFailed, RotationFailedError) as verdict:
            if self._cm is None:
                raise
            self.verdict = verdict
            return None  # type: ignore[return-value]  # reraise() runs before anyone reads it

    def reraise(self) -> None:
        if self.verdict is not None:
            raise self.verdict


def _step(state: RotationState) -> str:
    return state.step.value if state.step is not None else "start"


def _until(policy: RotationPolicy, state: RotationState) -> str:
    if state.finished_at is None:
        return "?"
    return f"{state.finished_at + policy.grace:%Y-%m-%d %H:%M:%S} UTC"
