"""``aws-iam-key``: rotate an IAM user's access key, using IAM's two-keys-per-user allowance.

The secret is an Airflow aws connection (``login`` = access key id,
``password`` = secret access key); the IAM user is ``settings.user``.

- ``create``: ``CreateAccessKey`` -- the user now has the CURRENT key and the
  new one, both active -- and stage the new one as PENDING;
- ``set``: make sure the new key is active (IAM activates it on creation);
- ``test``: ``sts:GetCallerIdentity`` signed with the new key must answer
  with this user's ARN (retried a few times: IAM keys take seconds to
  propagate in real AWS);
- ``finish``: the engine makes it CURRENT; the old key keeps working;
- ``retire`` (after the grace period): deactivate the old key, then delete it.

Crash safety: a crash between ``CreateAccessKey`` and staging leaves a key
whose secret nobody stored. The next ``create`` of the same rotation
deletes a non-CURRENT key created after the rotation started (it can only
be that orphan) before creating a new one; an older second key is someone
else's, and the rotator refuses to touch it.

Moto note: moto does not check request signatures, so in tests the
``test`` step proves the key id belongs to the user, not that the secret
key signs; against AWS it proves both.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from pydantic import Field

from runlease.errors import ConfigError, StoreAccessDeniedError
from runlease.models import SecretPath, SecretValue
from runlease.rotation.errors import RotationTestFailed
from runlease.rotation.rotators.aws_common import AwsTargetSettings, admin_service, keyed_service
from runlease.rotation.state import Step
from runlease.rotation.rotators.base import RotationContext, connection_value, rotator_settings
from runlease.store.base import StoredSecret

#: IAM is global; boto3 still wants a region to sign with.
IAM_REGION = "us-east-1"


class IamKeySettings(AwsTargetSettings):
    user: str = Field(pattern=r"^[\w+=,.@-]{1,64}$")
    delete_on_retire: bool = True
    test_attempts: int = Field(default=5, ge=1, le=30)
    test_delay_s: float = Field(default=2.0, ge=0, le=60)
    #: A second key created at most this long before the rotation started counts as its orphan (clock skew).
    orphan_window_s: int = Field(default=300, ge=0, le=3600)


class AwsIamKeyRotator:
    #: Steps whose work here never leaves runlease (see RotationEngine.rotate).
    offline_steps = frozenset({Step.FINISH})
    name = "aws-iam-key"

    def _settings(self, ctx: RotationContext) -> IamKeySettings:
        return rotator_settings(IamKeySettings, ctx.policy.settings, ctx.path, self.name)

    def check_settings(self, settings: dict[str, Any], path: SecretPath) -> None:
        opts = rotator_settings(IamKeySettings, settings, path, self.name)
        if opts.admin:
            SecretPath.parse(opts.admin)

    def _iam(self, ctx: RotationContext, opts: IamKeySettings) -> Any:
        return admin_service(ctx, opts, "iam", f"IAM (rotating {ctx.path})", default_region=IAM_REGION)

    def create(self, ctx: RotationContext, current: StoredSecret) -> SecretValue:
        opts = self._settings(ctx)
        conn = connection_value(current, self.name)
        iam = self._iam(ctx, opts)
        keys = iam.call("iam:ListAccessKeys", f"listing the access keys of IAM user {opts.user}",
                        lambda c: c.list_access_keys(UserName=opts.user)["AccessKeyMetadata"])
        ids = {k["AccessKeyId"] for k in keys}
        if conn.get("login") not in ids:
            raise ConfigError(f"rotator {self.name!r}: CURRENT of {ctx.path} is not an access key of IAM user {opts.user}")
        cutoff = ctx.started_at - timedelta(seconds=opts.orphan_window_s)
        for key in keys:
            if key["AccessKeyId"] == conn.get("login"):
                continue
            if key["CreateDate"] < cutoff:
                raise ConfigError(
                    f"IAM user {opts.user} already has a second access key (created {key['CreateDate']:%Y-%m-%d}) "
                    f"that {ctx.path} does not hold; IAM allows two per user -- delete it before rotating"
                )
            self._remove(iam, opts.user, key["AccessKeyId"], delete=True)  # orphan of an interrupted create
        created = iam.call("iam:CreateAccessKey", f"creating an access key for IAM user {opts.user}",
                           lambda c: c.create_access_key(UserName=opts.user)["AccessKey"])
        return {**conn, "login": created["AccessKeyId"], "password": created["SecretAccessKey"]}

    def set(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        opts = self._settings(ctx)
        key_id = connection_value(pending, self.name)["login"]
        self._iam(ctx, opts).call(
            "iam:UpdateAccessKey", f"activating the PENDING access key of IAM user {opts.user}",
            lambda c: c.update_access_key(UserName=opts.user, AccessKeyId=key_id, Status="Active"))

    def test(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        opts = self._settings(ctx)
        conn = connection_value(pending, self.name)
        sts = keyed_service("sts", opts.options(IAM_REGION), conn, f"STS (testing the PENDING key of {ctx.path})")
        problem = ""
        for attempt in range(opts.test_attempts):
            if attempt:
                time.sleep(opts.test_delay_s)
            try:
                arn = str(sts.call("sts:GetCallerIdentity", "checking the PENDING access key",
                                   lambda c: c.get_caller_identity()["Arn"]))
            except StoreAccessDeniedError as err:
                problem = f"AWS refused the PENDING access key ({type(err).__name__})"
                continue
            if arn.endswith(f":user/{opts.user}") or arn.endswith(f"/{opts.user}"):
                return
            problem = f"the PENDING access key authenticates as {arn}, not IAM user {opts.user}"
        raise RotationTestFailed(problem)

    def finish(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """Nothing in IAM: both keys are active; the engine moves CURRENT."""

    def _remove(self, iam: Any, user: str, key_id: str, *, delete: bool) -> None:
        gone = frozenset({"NoSuchEntity", "NoSuchEntityException"})
        from botocore.exceptions import ClientError

        try:
            iam.call("iam:UpdateAccessKey", f"deactivating an access key of IAM user {user}",
                     lambda c: c.update_access_key(UserName=user, AccessKeyId=key_id, Status="Inactive"),
                     passthrough=gone)
            if delete:
                iam.call("iam:DeleteAccessKey", f"deleting an access key of IAM user {user}",
                         lambda c: c.delete_access_key(UserName=user, AccessKeyId=key_id), passthrough=gone)
        except ClientError:
            return  # already gone: a re-run after a crash

    def _disable(self, ctx: RotationContext, key: StoredSecret, current: StoredSecret, *, delete: bool) -> None:
        opts = self._settings(ctx)
        key_id = connection_value(key, self.name).get("login")
        if not key_id or key_id == connection_value(current, self.name).get("login"):
            raise ConfigError(f"rotator {self.name!r}: refusing to disable the access key CURRENT of {ctx.path} uses")
        self._remove(self._iam(ctx, opts), opts.user, str(key_id), delete=delete)

    def retire(self, ctx: RotationContext, previous: StoredSecret, current: StoredSecret) -> None:
        self._disable(ctx, previous, current, delete=self._settings(ctx).delete_on_retire)

    def discard(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """A key that failed its test is of no use to anyone: deactivate and delete it (frees the slot)."""
        self._disable(ctx, pending, current, delete=True)
