"""``aws-secretsmanager``: rotate a secret that lives in AWS Secrets Manager, with its own labels.

The *target* is a Secrets Manager secret (``settings.secret_id``) that
services read directly with ``VersionStage=AWSCURRENT`` (and accept
AWSPREVIOUS during the grace period). The runlease secret holds the same
value, so runlease consumers and direct readers agree. This works whichever
store runlease itself uses.

The steps drive Secrets Manager's staging labels the way its rotation
Lambdas do, without a Lambda (``RotateSecret`` needs one):

- ``create``: a new random value (a string, or a connection's ``password``), staged PENDING in runlease;
- ``set``: ``PutSecretValue`` with ``ClientRequestToken = "runlease-" + <rotation token>`` and
  ``VersionStages=[AWSPENDING]`` -- the token makes the write idempotent, as AWS defines it;
- ``test``: read it back with ``VersionId`` *and* ``VersionStage=AWSPENDING`` and compare (constant
  time); also check AWSCURRENT still holds runlease's CURRENT, so a value written outside runlease
  is never silently demoted;
- ``finish``: ``UpdateSecretVersionStage`` moves AWSCURRENT to the new version (AWS moves AWSPREVIOUS
  to the old one), then AWSPENDING is removed; the engine then moves runlease's labels;
- ``retire``: remove AWSPREVIOUS from the old version (after checking it is the value runlease retires).

Every read passes an explicit ``VersionStage`` (moto can return a stale version otherwise).
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from pydantic import Field

from runlease.models import SecretPath, SecretValue
from runlease.rotation.errors import RotationTestFailed
from runlease.rotation.rotators.aws_common import AwsTargetSettings, admin_service
from runlease.rotation.state import Step
from runlease.rotation.rotators.base import RotationContext, new_secret_string, rotator_settings
from runlease.store.base import StoredSecret

log = logging.getLogger(__name__)

#: Error codes that mean "no such version / label here" (the caller decides what that implies).
_MISSING = frozenset({"ResourceNotFoundException", "InvalidRequestException", "InvalidParameterException"})


class SecretsManagerSettings(AwsTargetSettings):
    secret_id: str = Field(min_length=1, max_length=2048)
    #: Bytes of randomness in each new value.
    length: int = Field(default=32, ge=16, le=256)
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_\-]{0,32}$")


def encode(value: SecretValue) -> str:
    """The SecretString for a value: a string as-is, a connection dict as canonical JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def request_token(ctx: RotationContext) -> str:
    """The ClientRequestToken (and so the VersionId) of this rotation's version: 32-64 characters."""
    return f"runlease-{ctx.token}"


class AwsSecretsManagerRotator:
    #: Steps whose work here never leaves runlease (see RotationEngine.rotate).
    offline_steps = frozenset({Step.CREATE})
    name = "aws-secretsmanager"

    def _settings(self, ctx: RotationContext) -> SecretsManagerSettings:
        return rotator_settings(SecretsManagerSettings, ctx.policy.settings, ctx.path, self.name)

    def check_settings(self, settings: dict[str, Any], path: SecretPath) -> None:
        opts = rotator_settings(SecretsManagerSettings, settings, path, self.name)
        if opts.admin:
            SecretPath.parse(opts.admin)

    def _sm(self, ctx: RotationContext) -> tuple[Any, SecretsManagerSettings]:
        opts = self._settings(ctx)
        return admin_service(ctx, opts, "secretsmanager", f"Secrets Manager (rotating {ctx.path})"), opts

    @staticmethod
    def _labels(sm: Any, secret_id: str) -> dict[str, list[str]]:
        return dict(sm.call("secretsmanager:DescribeSecret", f"describing {secret_id}",
                            lambda c: c.describe_secret(SecretId=secret_id).get("VersionIdsToStages", {})))

    @staticmethod
    def _holder(labels: dict[str, list[str]], label: str) -> str | None:
        return next((vid for vid, stages in labels.items() if label in stages), None)

    @staticmethod
    def _read(sm: Any, secret_id: str, stage: str, version_id: str | None = None) -> str | None:
        """The SecretString at ``stage`` (and ``version_id``), None if that label is not there."""
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"SecretId": secret_id, "VersionStage": stage}
        if version_id is not None:
            kwargs["VersionId"] = version_id
        try:
            return sm.call("secretsmanager:GetSecretValue", f"reading {stage} of {secret_id}",
                           lambda c: c.get_secret_value(**kwargs).get("SecretString"), passthrough=_MISSING)
        except ClientError:
            return None

    @staticmethod
    def _move(sm: Any, secret_id: str, label: str, *, to: str | None, away_from: str | None) -> None:
        kwargs: dict[str, Any] = {"SecretId": secret_id, "VersionStage": label}
        if to is not None:
            kwargs["MoveToVersionId"] = to
        if away_from is not None:
            kwargs["RemoveFromVersionId"] = away_from
        sm.call("secretsmanager:UpdateSecretVersionStage", f"moving {label} of {secret_id}",
                lambda c: c.update_secret_version_stage(**kwargs))

    # -- steps ------------------------------------------------------------------

    def create(self, ctx: RotationContext, current: StoredSecret) -> SecretValue:
        opts = self._settings(ctx)
        fresh = new_secret_string(opts.length, opts.prefix)
        if isinstance(current.value, dict):
            return {**current.value, "password": fresh}
        return fresh

    def set(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        sm, opts = self._sm(ctx)
        vid = request_token(ctx)
        labels = self._labels(sm, opts.secret_id)
        if vid not in labels:
            sm.call("secretsmanager:PutSecretValue", f"staging AWSPENDING of {opts.secret_id}",
                    lambda c: c.put_secret_value(SecretId=opts.secret_id, ClientRequestToken=vid,
                                                 SecretString=encode(pending.value), VersionStages=["AWSPENDING"]))
        elif "AWSPENDING" not in labels[vid]:
            self._move(sm, opts.secret_id, "AWSPENDING", to=vid, away_from=self._holder(labels, "AWSPENDING"))

    def test(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        sm, opts = self._sm(ctx)
        staged = self._read(sm, opts.secret_id, "AWSPENDING", request_token(ctx))
        if staged is None or not hmac.compare_digest(staged.encode(), encode(pending.value).encode()):
            raise RotationTestFailed(f"AWSPENDING of {opts.secret_id} does not hold PENDING v{pending.version}")
        live = self._read(sm, opts.secret_id, "AWSCURRENT")
        if live is None or not hmac.compare_digest(live.encode(), encode(current.value).encode()):
            raise RotationTestFailed(f"AWSCURRENT of {opts.secret_id} does not hold CURRENT v{current.version} "
                                     "(changed outside runlease?); not demoting it")

    def finish(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        sm, opts = self._sm(ctx)
        vid = request_token(ctx)
        labels = self._labels(sm, opts.secret_id)
        holder = self._holder(labels, "AWSCURRENT")
        if holder != vid:
            self._move(sm, opts.secret_id, "AWSCURRENT", to=vid, away_from=holder)
            labels = self._labels(sm, opts.secret_id)
        if "AWSPENDING" in labels.get(vid, []):
            self._move(sm, opts.secret_id, "AWSPENDING", to=None, away_from=vid)

    def retire(self, ctx: RotationContext, previous: StoredSecret, current: StoredSecret) -> None:
        sm, opts = self._sm(ctx)
        holder = self._holder(self._labels(sm, opts.secret_id), "AWSPREVIOUS")
        if holder is None:
            return
        old = self._read(sm, opts.secret_id, "AWSPREVIOUS", holder)
        if old is None or not hmac.compare_digest(old.encode(), encode(previous.value).encode()):
            log.warning("AWSPREVIOUS of %s is not the version %s retires; leaving it", opts.secret_id, ctx.path)
            return
        self._move(sm, opts.secret_id, "AWSPREVIOUS", to=None, away_from=holder)

    def discard(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        sm, opts = self._sm(ctx)
        vid = request_token(ctx)
        if "AWSPENDING" in self._labels(sm, opts.secret_id).get(vid, []):
            self._move(sm, opts.secret_id, "AWSPENDING", to=None, away_from=vid)
