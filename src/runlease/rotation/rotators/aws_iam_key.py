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

Which keys it touches: only keys runlease itself created. Right after
``CreateAccessKey`` returns, the new key id is recorded on the IAM user as
the tag ``runlease:key:<AccessKeyId>`` = ``<path>@<rotation token>`` (needs
``iam:TagUser``; if the tag cannot be written the new key is deleted at once
and the step fails). Before creating, ``create`` looks at the user's keys
other than the one CURRENT holds:

- a key tagged for this path and *this* rotation: the orphan of a create that
  crashed after ``CreateAccessKey`` -- deactivated and deleted;
- a key tagged for this path that is *Inactive*: a key an earlier rotation
  retired with ``delete_on_retire=false`` -- deleted, so the user has a free
  slot (IAM allows two keys) and back-to-back rotations keep working;
- anything else (an untagged key, one tagged for another path, or an active
  runlease key of another rotation): someone else's; the rotator refuses
  with an error naming the key and touches nothing.

Every key the rotator deletes on its own is recorded in the audit trail
(``rotate`` event, step ``effect``, with the key id and the reason). A crash
between ``CreateAccessKey`` and the tag leaves an untagged key: the next
create refuses (never guesses) and the error says which key to delete.

Moto note: moto does not check request signatures, so in tests the
``test`` step proves the key id belongs to the user, not that the secret
key signs; against AWS it proves both.
"""

from __future__ import annotations

import hashlib
import time
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
    #: After the grace period: delete the old key (True) or only deactivate it (False: it stays for
    #: inspection until the next rotation's create deletes it to free the slot).
    delete_on_retire: bool = True
    test_attempts: int = Field(default=5, ge=1, le=30)
    test_delay_s: float = Field(default=2.0, ge=0, le=60)
    #: Deprecated and ignored: keys are recognised by runlease's own record, never by their age.
    orphan_window_s: int | None = Field(default=None, ge=0, le=3600)


#: IAM user tag recording a key runlease created: ``runlease:key:<AccessKeyId>`` = ``<path>@<token>``.
KEY_TAG = "runlease:key:"
_GONE = frozenset({"NoSuchEntity", "NoSuchEntityException"})


def key_ref(key_id: str) -> dict[str, str]:
    """How the audit trail names an access key: its last 4 characters (as IAM's console lists keys) and
    a SHA-256 prefix to match against CloudTrail -- the trail treats a whole key id as half a credential."""
    return {"access_key_hint": key_id[-4:], "access_key_sha256": hashlib.sha256(key_id.encode()).hexdigest()[:16]}


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
        created = self._created_keys(iam, opts.user)
        for key in sorted(keys, key=lambda k: k["CreateDate"]):
            key_id = key["AccessKeyId"]
            if key_id == conn.get("login"):
                continue
            owner = created.get(key_id, "")
            path, _, token = owner.rpartition("@")
            if path == str(ctx.path) and token == ctx.token:
                why = "orphan of an interrupted create of this rotation"
            elif path == str(ctx.path) and key["Status"] == "Inactive":
                why = "inactive key retired by an earlier rotation (delete_on_retire=false)"
            else:
                whose = (f"runlease created it for {path} (rotation {token})" if owner
                         else "runlease did not create it")
                raise ConfigError(
                    f"IAM user {opts.user} already has a second access key {key_id} ({key['Status']}, created "
                    f"{key['CreateDate']:%Y-%m-%d %H:%M}) that {ctx.path} does not hold and {whose}; IAM allows "
                    "two keys per user -- delete it before rotating"
                )
            self._remove(iam, opts.user, key_id, delete=True)
            ctx.note("deleted-access-key", {**key_ref(key_id), "user": opts.user, "why": why})
        new = iam.call("iam:CreateAccessKey", f"creating an access key for IAM user {opts.user}",
                       lambda c: c.create_access_key(UserName=opts.user)["AccessKey"])
        try:
            iam.call("iam:TagUser", f"recording the new access key on IAM user {opts.user}",
                     lambda c: c.tag_user(UserName=opts.user, Tags=[
                         {"Key": KEY_TAG + new["AccessKeyId"], "Value": f"{ctx.path}@{ctx.token}"}]))
        except Exception:
            # Unrecorded, it could never be told apart from someone else's key: take it back now.
            self._remove(iam, opts.user, new["AccessKeyId"], delete=True)
            raise
        ctx.note("created-access-key", {**key_ref(new["AccessKeyId"]), "user": opts.user})
        return {**conn, "login": new["AccessKeyId"], "password": new["SecretAccessKey"]}

    @staticmethod
    def _created_keys(iam: Any, user: str) -> dict[str, str]:
        """Access key id -> ``<path>@<token>`` for the keys runlease recorded on ``user``."""
        def fetch(c: Any) -> list[dict[str, str]]:
            tags: list[dict[str, str]] = []
            kwargs: dict[str, Any] = {"UserName": user}
            for _ in range(100):  # bounded: 50 tags per user at most
                page = c.list_user_tags(**kwargs)
                tags.extend(page.get("Tags") or [])
                if not page.get("IsTruncated"):
                    break
                kwargs["Marker"] = page["Marker"]
            return tags

        tags = iam.call("iam:ListUserTags", f"listing the tags of IAM user {user}", fetch)
        return {t["Key"][len(KEY_TAG):]: t["Value"] for t in tags if t["Key"].startswith(KEY_TAG)}

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
        """Deactivate a key, and delete it (and runlease's record of it) if ``delete``."""
        from botocore.exceptions import ClientError

        try:
            iam.call("iam:UpdateAccessKey", f"deactivating an access key of IAM user {user}",
                     lambda c: c.update_access_key(UserName=user, AccessKeyId=key_id, Status="Inactive"),
                     passthrough=_GONE)
            if delete:
                iam.call("iam:DeleteAccessKey", f"deleting an access key of IAM user {user}",
                         lambda c: c.delete_access_key(UserName=user, AccessKeyId=key_id), passthrough=_GONE)
        except ClientError:
            pass  # already gone: a re-run after a crash
        if delete:
            iam.call("iam:UntagUser", f"removing the record of a deleted access key of IAM user {user}",
                     lambda c: c.untag_user(UserName=user, TagKeys=[KEY_TAG + key_id]))

    def _disable(self, ctx: RotationContext, key: StoredSecret, current: StoredSecret, *, delete: bool) -> None:
        opts = self._settings(ctx)
        key_id = connection_value(key, self.name).get("login")
        if not key_id or key_id == connection_value(current, self.name).get("login"):
            raise ConfigError(f"rotator {self.name!r}: refusing to disable the access key CURRENT of {ctx.path} uses")
        self._remove(self._iam(ctx, opts), opts.user, str(key_id), delete=delete)

    def retire(self, ctx: RotationContext, previous: StoredSecret, current: StoredSecret) -> None:
        opts = self._settings(ctx)
        if not opts.delete_on_retire:
            # Kept inactive: record it as this secret's (the first key was created outside runlease),
            # so the next create may delete it to free IAM's second slot.
            key_id = str(connection_value(previous, self.name).get("login") or "")
            if key_id:
                self._iam(ctx, opts).call(
                    "iam:TagUser", f"recording the retired access key on IAM user {opts.user}",
                    lambda c: c.tag_user(UserName=opts.user, Tags=[
                        {"Key": KEY_TAG + key_id, "Value": f"{ctx.path}@retired"}]))
        self._disable(ctx, previous, current, delete=opts.delete_on_retire)
        if opts.delete_on_retire:
            ctx.note("deleted-access-key", {**key_ref(str(connection_value(previous, self.name).get("login"))),
                                            "user": opts.user, "why": "retired after the grace period"})

    def discard(self, ctx: RotationContext, pending: StoredSecret, current: StoredSecret) -> None:
        """A key that failed its test is of no use to anyone: deactivate and delete it (frees the slot)."""
        self._disable(ctx, pending, current, delete=True)
