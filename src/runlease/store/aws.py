"""AWS Secrets Manager as the central manager: native staging labels, explicit stages on every read.

Layout: the runlease secret ``prod/connections/warehouse`` is the Secrets
Manager secret ``<prefix>prod/connections/warehouse`` (prefix default
``runlease/``), optionally encrypted under a customer KMS key
(``kms_key_id``). Each version's ``SecretString`` is an *envelope*
(:mod:`runlease.store.aws_envelope`): a JSON object with the marker key
``runlease:envelope`` (format 1), the secret name and version number it was
written for, the lease settings it was written with (issuer and its options)
and the value (an object for connections, a JSON string otherwise). Versions
written before the envelope hold the bare value and are still read (their
settings come from the tags).

Version numbers <-> VersionIds: runlease version N is written with
``ClientRequestToken = "runlease-v" + N zero-padded to 22 digits`` (32
characters, the minimum AWS accepts), and that token *becomes* the VersionId.
So the number is read straight off any VersionId, no lookup table can drift,
and creating version N is itself a compare-and-set: AWS refuses a second,
different value under an existing token (ResourceExistsException), so two
writers can never both create version N -- the loser renumbers.

Stages are AWS's own labels (CURRENT=AWSCURRENT, PENDING=AWSPENDING,
PREVIOUS=AWSPREVIOUS). Three AWS behaviours differ from runlease's model and
are bridged here so the store contract holds exactly:

* AWS gives the *first* version of a secret AWSCURRENT no matter what was
  asked, and never lets AWSCURRENT be removed. So every secret is created
  with a placeholder *version 0* that holds AWSCURRENT until a real version
  takes it; a label on version 0 means "no version" (a PENDING-only secret,
  a removed CURRENT).
* Moving AWSCURRENT makes AWS move AWSPREVIOUS to the old holder. That is
  what ``put`` wants, but ``move_stage`` must leave PREVIOUS alone, so it puts
  AWSPREVIOUS back afterwards (a second call; the window is documented).
* Moving a label that is attached elsewhere requires ``RemoveFromVersionId``,
  and AWS rejects the call if the label is no longer there: that is the
  native compare-and-swap ``move_stage(expected=...)`` and ``put(cas=...)``
  rely on. A put of a new CURRENT writes the value under a private label
  (``runlease-writing-N``), then moves AWSCURRENT from the holder it read
  (with ``cas``: the expected one, else a ConflictError; without: retried
  from the new holder). AWSCURRENT is never passed to PutSecretValue, which
  also keeps moto's stale AWSCURRENT tracking out of the picture.
  A ``cas`` with stage PENDING/PREVIOUS is checked just before the write
  (AWS has no condition to attach to it); a concurrent move of CURRENT in
  that window is not detected.

Soft delete and metadata live in tags: ``runlease:deleted-at`` (reads fail,
history stays, a later put revives -- AWS's own DeleteSecret would destroy
history after the recovery window; the stage labels move to the placeholder
first, so a one-request read sees the delete at once) and
``runlease:meta:<key>`` (or ``runlease:metaj:<key>`` with base64url JSON for
values outside AWS's tag character set). Every value read passes an explicit
``VersionStage`` or ``VersionId``; nothing relies on AWS's implicit
AWSCURRENT default.

Tags belong to the secret, a value to a version: a put's settings (issuer
and its options) are first tagged as *staged for its version*
(``runlease.next``), become visible together with the version when AWSCURRENT
moves (one atomic call), and are merged into the plain tags afterwards; the
demoted version keeps its own (``runlease.prev``). A put that fails before
its stage move leaves its version under ``runlease-writing-N``, which every
read refuses (``put``). Each put also tags its write time
(``runlease:at:<N>``), so a listing can date CURRENT.

Requests: a stage read is one GetSecretValue -- value, VersionId, labels
and the version's own settings in one immutable answer (``get``). Tags are
still written by every put (``resolve``, ``info``, ``ls`` and old-layout
versions read them), and they hold what belongs to the secret rather than to
a version: rotation policy and state. ``update_metadata`` of a *lease*
setting (anything but rotation policy/state; runlease's CLI changes those
only with a put) labels the versions holding a stage ``runlease-settings-N``,
and a read of such a version takes the tags (DescribeSecret) instead of its
envelope.

Trust: in AWS both the SecretString and the tags are protected only by IAM.
Before the envelope, a version's settings were guarded by
``secretsmanager:TagResource``; now by what writes and promotes versions
(``PutSecretValue``, ``UpdateSecretVersionStage``), and a tag edited behind
runlease's back no longer changes how an existing version is leased. A
principal that can write versions chooses value and settings *together*: to
pair credentials with ``static`` it must write them, so it can only hand out
what it already knows (runlease's rendered IAM policy grants those actions
with ``rotate``, which includes GetSecretValue anyway). A SecretString copied
from another secret or version fails the envelope's name/version binding and
is refused, never read under the settings it carried.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import Field, ValidationError, field_validator

from runlease.clients.awsclient import AwsConnectionOptions, AwsService, error_code
from runlease.errors import (
    ConflictError,
    InvalidPathError,
    InvalidValueError,
    SecretNotFoundError,
    StoreUnavailableError,
)
from runlease.models import SecretInfo, SecretPath, SecretValue, SecretVersion, Stage, utcnow
from runlease.store.aws_envelope import ENVELOPE_KEY, open_secret_string, seal
from runlease.store.base import Resolved, StoredSecret, metadata_conflicts
from runlease.store.codec import encode_json
from runlease.store.options import options_error

VERSION_PREFIX = "runlease-v"
LABELS: dict[Stage, str] = {Stage.CURRENT: "AWSCURRENT", Stage.PENDING: "AWSPENDING", Stage.PREVIOUS: "AWSPREVIOUS"}
STAGES_BY_LABEL = {label: stage for stage, label in LABELS.items()}
PLACEHOLDER = json.dumps({"runlease": "version 0 is a placeholder: a staging label on it points at no version"})
TAG_MANAGED = "runlease:managed"
TAG_DELETED = "runlease:deleted-at"
TAG_META = "runlease:meta:"
TAG_META_JSON = "runlease:metaj:"
#: Continuation chunks of a JSON value longer than one tag: ``runlease:metaj+<i>:<key>``.
TAG_META_MORE = "runlease:metaj+"
TAG_VALUE_MAX = 256
#: When version N was written: ``runlease:at:<N>`` = ISO time (ListSecrets returns tags, not version dates).
TAG_AT = "runlease:at:"
#: Write-time tags kept beyond the versions holding a stage.
AT_KEEP = 4
#: At most this many tags per metadata value (AWS allows 50 tags per secret).
MAX_CHUNKS = 8
#: Characters AWS allows in tag keys and values.
_TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*")
MAX_ATTEMPTS = 16
#: The private label a new CURRENT is written under until AWSCURRENT moves to it.
WRITING_LABEL = "runlease-writing-"
#: Metadata key of a put's settings staged for the version it wrote (see ``AwsSecretsStore.put``).
STAGED_KEY = "runlease.next"
#: Metadata key holding the settings the version a put demoted was written with (see ``_finish_staged``).
KEPT_KEY = "runlease.prev"
RESERVED_KEYS = frozenset({STAGED_KEY, KEPT_KEY})
#: Metadata of the secret rather than of a version: rotation policy and state (``runlease.rotation``'s
#: POLICY_KEY and STATE_KEY). They are not sealed into a version's envelope; every other key is a lease
#: setting (issuer and its options) and is.
SECRET_ONLY_KEYS = frozenset({"rotation", "rotation_state"})
#: ``runlease-settings-<N>`` on version N: its lease settings were changed by ``update_metadata`` after it
#: was written, so they are read from the tags (DescribeSecret), not from its envelope.
SETTINGS_LABEL = "runlease-settings-"
#: Secrets whose description one store object keeps (for ``get``'s one-request path).
SEEN_MAX = 4096
#: What ``_actual`` reports when AWSCURRENT is on a version runlease did not write.
FOREIGN = -1


def version_id(n: int) -> str:
    """The VersionId (ClientRequestToken) of runlease version ``n``: 32 characters."""
    return f"{VERSION_PREFIX}{n:022d}"


def version_number(vid: str) -> int | None:
    """The runlease version in a VersionId, or None if runlease did not write it."""
    if vid.startswith(VERSION_PREFIX) and vid[len(VERSION_PREFIX):].isdigit() and len(vid) == 32:
        return int(vid[len(VERSION_PREFIX):])
    return None


def unfinished(stages: list[str] | None) -> bool:
    """A version still under its private writing label and no runlease stage: a put that never completed."""
    names = stages or []
    return any(s.startswith(WRITING_LABEL) for s in names) and not any(s in STAGES_BY_LABEL for s in names)


class AwsOptions(AwsConnectionOptions):
    """``RUNLEASE_STORE_OPTIONS`` for ``RUNLEASE_STORE=aws``."""

    #: Prepended to every runlease path to form the secret name.
    prefix: str = "runlease/"
    #: KMS key (id, ARN or alias) for new secrets; AWS's managed key when unset.
    kms_key_id: str | None = None
    #: Versions written before the envelope layout: how long a read may reuse this process's last
    #: DescribeSecret of the secret (its tags) while the stage is still on the same version; 0: describe
    #: on every such read (2 requests). Envelope versions never need it. See ``get``.
    metadata_cache_seconds: float = Field(default=60.0, ge=0, le=3600)

    @field_validator("prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        """``team-a`` would glue names (``team-aprod/...``): a non-empty prefix always ends in ``/``."""
        return value if not value or value.endswith("/") else value + "/"


@dataclass
class _Secret:
    """What DescribeSecret (or a ListSecrets entry) says about one secret."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)  # AWS label -> VersionId
    tags: dict[str, str] = field(default_factory=dict)
    created: datetime | None = None
    changed: datetime | None = None
    planned_deletion: bool = False

    @classmethod
    def from_api(cls, doc: dict[str, Any]) -> "_Secret":
        labels: dict[str, str] = {}
        stages = doc.get("VersionIdsToStages") or doc.get("SecretVersionsToStages") or {}
        for vid, names in stages.items():
            for label in names:
                labels[label] = vid
        return cls(
            name=doc["Name"],
            labels=labels,
            tags={t["Key"]: t["Value"] for t in doc.get("Tags") or []},
            created=doc.get("CreatedDate"),
            changed=doc.get("LastChangedDate") or doc.get("CreatedDate"),
            planned_deletion=doc.get("DeletedDate") is not None,
        )

    @property
    def deleted(self) -> bool:
        return TAG_DELETED in self.tags or self.planned_deletion

    def holder(self, path: SecretPath, stage: Stage) -> int | None:
        """The runlease version holding ``stage`` (None: nowhere, or on the placeholder)."""
        vid = self.labels.get(LABELS[stage])
        if vid is None:
            return None
        n = version_number(vid)
        if n is None:
            raise InvalidValueError(
                f"{stage.value} of {path} ({LABELS[stage]} of {self.name}) is on AWS version {vid}, which runlease "
                "did not write; write a new version with `runlease put`"
            )
        return n or None

    def stages(self) -> dict[Stage, int]:
        out = {}
        for label, vid in self.labels.items():
            stage, n = STAGES_BY_LABEL.get(label), version_number(vid)
            if stage is not None and n:
                out[stage] = n
        return out

    def staged(self) -> tuple[int, dict[str, Any]] | None:
        """``(version, settings)`` a put staged for the version it wrote, if still in the tags."""
        doc = self._all_metadata().get(STAGED_KEY)
        if not isinstance(doc, dict) or not isinstance(doc.get("version"), int) or not isinstance(doc.get("patch"), dict):
            return None
        return doc["version"], doc["patch"]

    def metadata(self) -> dict[str, Any]:
        """The secret's settings as they apply to its CURRENT version."""
        try:
            current = version_number(self.labels.get(LABELS[Stage.CURRENT], "")) or 0
        except InvalidValueError:
            current = 0
        return self.metadata_for(current)

    def metadata_for(self, version: int | None) -> dict[str, Any]:
        """The settings that apply to ``version``: the tags, plus what a put staged for exactly that version.

        Tags belong to the secret, not to a version; a put's settings are first
        staged *for its version* and only later merged into the plain tags, so
        the old CURRENT is never read under the new settings nor the new
        version under the old ones (see ``AwsSecretsStore.put``).
        """
        meta = self._all_metadata()
        kept = meta.pop(KEPT_KEY, None)
        meta.pop(STAGED_KEY, None)
        staged = self.staged()
        if staged is not None and version and staged[0] == version:
            meta.update(staged[1])
        elif isinstance(kept, dict) and version and kept.get("version") == version and isinstance(kept.get("patch"), dict):
            for key, old in kept["patch"].items():
                if old is None:
                    meta.pop(key, None)
                else:
                    meta[key] = old
        return meta

    def _all_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for key, value in self.tags.items():
            if key.startswith(TAG_META):
                meta[key[len(TAG_META):]] = value
            elif key.startswith(TAG_META_JSON):
                name = key[len(TAG_META_JSON):]
                encoded = self._joined(name, value)
                if encoded is None:
                    continue  # a chunk is missing (a hand-edited tag): ignore it rather than fail every read
                try:
                    meta[name] = json.loads(base64.urlsafe_b64decode(encoded.encode()))
                except ValueError:
                    continue  # a hand-edited tag: ignore it rather than fail every read
        return meta

    def _joined(self, name: str, value: str) -> str | None:
        """The whole base64 text of a JSON value: one tag, or ``<n>:<chunk 0>`` plus n-1 continuations.

        The count in the first tag is what makes a rewrite safe to read at any
        moment: all chunks are set by one TagResource call, and continuation
        tags left over from a longer old value are beyond the count.
        """
        if ":" not in value:  # base64url has no ':': a value that fits one tag
            return value
        count, _, first = value.partition(":")
        if not count.isdigit():
            return None
        parts = [first] + [self.tags.get(_more_key(i, name)) for i in range(1, int(count))]
        return None if any(p is None for p in parts) else "".join(parts)  # type: ignore[arg-type]


def _more_key(i: int, key: str) -> str:
    return f"{TAG_META_MORE}{i}:{key}"


def _metadata_tags(path: SecretPath, patch: dict[str, Any]) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """Tags to set, tag keys to remove before and after setting them, for a metadata patch.

    A string that fits AWS's tag alphabet is one plain tag; anything else is
    base64url JSON, split over up to :data:`MAX_CHUNKS` tags when longer than
    one (a rotation policy or state does not fit 256 characters). Errors name
    the key, never a value.
    """
    tag, before, after = [], [], []
    for key, value in patch.items():
        if not isinstance(key, str) or not key or not _TAG_TEXT.fullmatch(key) or len(_more_key(MAX_CHUNKS, key)) > 128:
            raise InvalidValueError(f"metadata key {key!r} of {path} cannot be an AWS tag key (max 111 of A-Z a-z 0-9 _ . : / = + - @)")
        if isinstance(value, str) and _TAG_TEXT.fullmatch(value) and len(value) <= TAG_VALUE_MAX:
            tag.append({"Key": TAG_META + key, "Value": value})
            before.append(TAG_META_JSON + key)
            after.extend(_more_key(i, key) for i in range(1, MAX_CHUNKS))
            continue
        encoded = base64.urlsafe_b64encode(json.dumps(value, sort_keys=True).encode()).decode()
        if len(encoded) <= TAG_VALUE_MAX:
            chunks = [encoded]
        else:
            first = TAG_VALUE_MAX - len(f"{MAX_CHUNKS}:")  # room for the "<count>:" prefix
            rest = encoded[first:]
            chunks = [encoded[:first]] + [rest[i:i + TAG_VALUE_MAX] for i in range(0, len(rest), TAG_VALUE_MAX)]
            if len(chunks) > MAX_CHUNKS:
                raise InvalidValueError(f"metadata {key!r} of {path} is too large for AWS tags "
                                        f"({MAX_CHUNKS} tags of {TAG_VALUE_MAX} characters)")
            chunks[0] = f"{len(chunks)}:{chunks[0]}"
        tag.append({"Key": TAG_META_JSON + key, "Value": chunks[0]})
        tag.extend({"Key": _more_key(i, key), "Value": chunk} for i, chunk in enumerate(chunks[1:], start=1))
        before.append(TAG_META + key)
        after.extend(_more_key(i, key) for i in range(len(chunks), MAX_CHUNKS))
    return tag, before, after


class AwsSecretsStore:
    """SecretStore over AWS Secrets Manager (see the module docstring for the mapping)."""

    name = "aws"

    def __init__(self, options: AwsOptions, service: AwsService | None = None) -> None:
        self.options = options
        self.prefix = options.prefix
        self.service = service or AwsService("secretsmanager", options, label="AWS Secrets Manager")
        #: secret name -> (monotonic time, description): tags and labels for ``get``'s one-request path.
        self._seen: dict[str, tuple[float, _Secret]] = {}
        self._seen_lock = threading.Lock()

    @classmethod
    def from_options(cls, raw: dict[str, Any]) -> "AwsSecretsStore":
        try:
            options = AwsOptions.model_validate(raw)
        except ValidationError as err:
            raise options_error("aws", err) from None
        return cls(options)

    @property
    def location(self) -> str:
        return f"{self.service.describe()}, name prefix {self.prefix!r}"

    # -- helpers ------------------------------------------------------------------

    def _name(self, path: SecretPath) -> str:
        return f"{self.prefix}{path}"

    def _where(self, path: SecretPath) -> str:
        return f"AWS Secrets Manager secret {self._name(path)}"

    def _call(self, action: str, what: str, fn: Callable[[Any], Any], *passthrough: str) -> Any:
        return self.service.call(f"secretsmanager:{action}", what, fn, passthrough=frozenset(passthrough))

    def _describe(self, path: SecretPath) -> _Secret | None:
        from botocore.exceptions import ClientError

        name = self._name(path)
        try:
            doc = self._call("DescribeSecret", f"describing {name}", lambda c: c.describe_secret(SecretId=name),
                             "ResourceNotFoundException")
        except ClientError:
            return None
        return _Secret.from_api(doc)

    def _live(self, path: SecretPath, secret: _Secret | None) -> _Secret:
        if secret is None:
            raise SecretNotFoundError(f"secret {path} not found ({self._lookup_where(path)})")
        if secret.deleted:
            raise SecretNotFoundError(f"secret {path} not found (deleted)")
        return secret

    def _versions(self, path: SecretPath) -> list[dict[str, Any]]:
        name = self._name(path)

        def fetch(client: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            kwargs: dict[str, Any] = {"SecretId": name, "IncludeDeprecated": True, "MaxResults": 100}
            while True:  # botocore has no paginator for this operation
                page = client.list_secret_version_ids(**kwargs)
                out.extend(page.get("Versions") or [])
                if not page.get("NextToken"):
                    return out
                kwargs["NextToken"] = page["NextToken"]

        return self._call("ListSecretVersionIds", f"listing versions of {name}", fetch)

    def _numbers(self, path: SecretPath) -> set[int]:
        return {n for v in self._versions(path) if (n := version_number(v["VersionId"])) is not None}

    def _move_label(self, path: SecretPath, label: str, to_vid: str | None, from_vid: str | None) -> None:
        name = self._name(path)
        kwargs: dict[str, Any] = {"SecretId": name, "VersionStage": label}
        if to_vid is not None:
            kwargs["MoveToVersionId"] = to_vid
        if from_vid is not None:
            kwargs["RemoveFromVersionId"] = from_vid
        self._call("UpdateSecretVersionStage", f"moving {label} of {name}",
                   lambda c: c.update_secret_version_stage(**kwargs), "InvalidParameterException")

    def _drop_labels_from_before_delete(self, path: SecretPath, revived_vid: str) -> None:
        """Reviving a deleted secret starts afresh, as on the other stores.

        Labels still on pre-delete versions must not make them leasable (or a
        deleted API key verifiable) again: PREVIOUS and PENDING are removed, and
        an AWSCURRENT AWS insists on keeping goes back to the placeholder (= none).
        """
        fresh = self._describe(path)
        if fresh is None:
            return
        holder = fresh.labels.get(LABELS[Stage.CURRENT])
        if holder is not None and holder != revived_vid and version_number(holder) != 0:
            # First, as AWS then moves AWSPREVIOUS onto the old holder, which the loop below removes.
            self._move_label(path, LABELS[Stage.CURRENT], version_id(0), holder)
            fresh = self._describe(path) or fresh
        for stage in (Stage.PREVIOUS, Stage.PENDING):
            holder = fresh.labels.get(LABELS[stage])
            if holder is None or holder == revived_vid or version_number(holder) == 0:
                continue
            self._move_label(path, LABELS[stage], None, holder)

    def _restore_previous(self, path: SecretPath, wanted: str | None, auto: str | None) -> None:
        """After AWSCURRENT left ``auto``, AWS put AWSPREVIOUS there; put it back on ``wanted``."""
        if auto is None or wanted == auto:
            return
        if version_number(auto) == 0 and (wanted is None or version_number(wanted) == 0):
            return  # "no PREVIOUS" either way: absent, or on the placeholder
        self._move_label(path, LABELS[Stage.PREVIOUS], wanted, auto)

    def _create(self, path: SecretPath) -> None:
        from botocore.exceptions import ClientError

        name = self._name(path)
        kwargs: dict[str, Any] = {
            "Name": name,
            "ClientRequestToken": version_id(0),
            "SecretString": PLACEHOLDER,
            "Description": f"runlease secret {path} (version 0 is a placeholder; see docs/stores.md)",
            "Tags": [{"Key": TAG_MANAGED, "Value": "true"}],
        }
        if self.options.kms_key_id:
            kwargs["KmsKeyId"] = self.options.kms_key_id
        try:
            self._call("CreateSecret", f"creating {name}", lambda c: c.create_secret(**kwargs),
                       "ResourceExistsException")
        except ClientError:
            pass  # created concurrently by another writer: fine, we describe it next

    # -- SecretStore: writes --------------------------------------------------------

    #: A stage read is one GetSecretValue, the settings sealed in the version (RotationAwareCache uses it).
    one_call_reads = True
    #: ``put`` takes ``metadata`` and applies it atomically with the version it writes (Broker.put uses it).
    put_takes_metadata = True

    def put(self, path: SecretPath, value: SecretValue, *, cas: int | None = None, stage: Stage = Stage.CURRENT,
            metadata: dict[str, Any] | None = None) -> int:
        """Write version N -- with ``metadata`` (issuer settings) applying to it from the moment it is readable.

        Order: (1) PutSecretValue of the envelope -- the value sealed with N's settings
        (the secret's, with ``metadata`` on top), which is all a stage read needs --
        under a label no reader uses (``runlease-writing-N`` for a new CURRENT); (2) one TagResource records N's write time
        (``runlease:at:N``) and tags the settings as *staged for version N*
        (``runlease:metaj:runlease.next``), which changes nothing for any other
        version; (3) UpdateSecretVersionStage moves AWSCURRENT to N -- the one
        atomic switch: every reader sees either (old value, old settings) or
        (N, N's settings); (4) the staged settings are merged into the plain
        tags and the staging tag removed. A failure in (2) or (3) leaves the
        old CURRENT and its settings untouched and N under its writing label,
        which every read refuses ("an unfinished write"); a failure in (4) is
        finished by the next write. A PENDING put stages its settings for N
        the same way; they become the plain tags when N is made CURRENT.
        """
        from botocore.exceptions import ClientError

        encode_json(path, value)  # refuse a bad value before anything is written
        if isinstance(value, dict) and ENVELOPE_KEY in value:
            seal(path, "", 0, {}, value)  # raises: the key is reserved for the envelope
        patch = dict(metadata or {})
        if patch:
            _metadata_tags(path, patch)  # refuse bad keys before anything is written
            if RESERVED_KEYS & set(patch):
                raise InvalidValueError(f"metadata keys {sorted(RESERVED_KEYS)} of {path} are reserved")
        name = self._name(path)
        self._forget(path)
        for _ in range(MAX_ATTEMPTS):
            secret = self._describe(path)
            if secret is None:
                self._create(path)
                continue
            if secret.planned_deletion:
                raise SecretNotFoundError(
                    f"{self._where(path)} is scheduled for deletion in AWS; restore it (RestoreSecret) first"
                )
            actual = self._actual(path, secret)
            if cas is not None and cas != actual:
                found = "a version runlease did not write" if actual == FOREIGN else f"v{actual}"
                raise ConflictError(f"check-and-set failed for {path}: expected CURRENT v{cas}, found {found}")
            if TAG_MANAGED not in secret.tags:
                # A secret created outside runlease and adopted by this put: `ls`, `rotation status`
                # and the rotation DAG list only managed secrets.
                self._call("TagResource", f"marking {name} as managed by runlease", lambda c: c.tag_resource(
                    SecretId=name, Tags=[{"Key": TAG_MANAGED, "Value": "true"}]))
            secret = self._finish_staged(path, secret)  # settings of an interrupted put, before staging ours
            # The version's lease settings: the secret's now, with this put's on top -- sealed into its value.
            settings = {k: v for k, v in secret.metadata_for(None).items() if k not in SECRET_ONLY_KEYS}
            settings.update((k, v) for k, v in patch.items() if k not in SECRET_ONLY_KEYS)
            version = max(self._numbers(path), default=0) + 1
            temp = f"{WRITING_LABEL}{version}"
            text = seal(path, name, version, settings, value)
            try:
                self._call("PutSecretValue", f"writing version {version} of {name}", lambda c: c.put_secret_value(
                    SecretId=name, ClientRequestToken=version_id(version), SecretString=text,
                    VersionStages=[temp if stage is Stage.CURRENT else LABELS[stage]]), "ResourceExistsException")
            except ClientError:
                continue  # another writer created this version number first: renumber
            self._tag_written(path, secret, version, patch)
            if stage is Stage.CURRENT:
                secret, actual = self._promote(path, secret, version, cas)
                self._move_label(path, temp, None, version_id(version))
                if not actual:
                    # No live CURRENT was demoted (a revived secret, or CURRENT removed): runlease leaves
                    # PREVIOUS alone, but AWS just moved AWSPREVIOUS to the old AWSCURRENT holder.
                    self._restore_previous(path, secret.labels.get(LABELS[Stage.PREVIOUS]),
                                           secret.labels.get(LABELS[Stage.CURRENT]))
            if secret.deleted:
                self._drop_labels_from_before_delete(path, version_id(version))
                self._call("UntagResource", f"reviving {name}",
                           lambda c: c.untag_resource(SecretId=name, TagKeys=[TAG_DELETED]))
            if patch and stage is Stage.CURRENT:
                fresh = self._describe(path)
                if fresh is not None:
                    self._finish_staged(path, fresh)
            return version
        raise ConflictError(f"{path} kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} rounds")

    def _tag_written(self, path: SecretPath, secret: _Secret, version: int, patch: dict[str, Any]) -> None:
        """One TagResource: when version N was written, and the settings staged for it (if any).

        The write time lets ``ls``/``rotation status`` date CURRENT from one ListSecrets; old
        write-time tags beyond the staged versions and the newest few are pruned (50 tags per secret).
        """
        name = self._name(path)
        tags = [{"Key": f"{TAG_AT}{version}", "Value": utcnow().isoformat()}]
        leftover: list[str] = []
        if patch:
            staged, _, after = _metadata_tags(path, {STAGED_KEY: {"version": version, "patch": patch}})
            tags += staged
            leftover = [k for k in after if k in secret.tags]
        self._call("TagResource", f"recording version {version} of {name}",
                   lambda c: c.tag_resource(SecretId=name, Tags=tags))
        held = {f"{TAG_AT}{n}" for n in secret.stages().values()}
        dated = sorted((k for k in secret.tags if k.startswith(TAG_AT) and k[len(TAG_AT):].isdigit()),
                       key=lambda k: int(k[len(TAG_AT):]))
        leftover += [k for k in dated[:-AT_KEEP] if k not in held]
        if leftover:
            self._call("UntagResource", f"updating metadata of {name}",
                       lambda c: c.untag_resource(SecretId=name, TagKeys=leftover))
        self._forget(path)

    def version_created_at(self, path: SecretPath, version: int) -> datetime | None:
        """When ``version`` was written, from the tags this store last saw in ``list`` (None: unknown).

        Lets ``rotation status`` date CURRENT without a ListSecretVersionIds per secret; versions
        written before the write-time tags existed answer None (the caller then asks ``history``).
        """
        with self._seen_lock:
            seen = self._seen.get(self._name(path))
        raw = seen[1].tags.get(f"{TAG_AT}{version}") if seen is not None else None
        try:
            return datetime.fromisoformat(raw) if raw else None
        except ValueError:
            return None

    def _finish_staged(self, path: SecretPath, secret: _Secret) -> _Secret:
        """Merge settings staged for the CURRENT version into the plain tags; drop stale staged settings.

        Safe at any point: while the staging tag is there it wins for its
        version, and the plain tags get the same values before it goes.
        Settings staged for a version that is not CURRENT (a put that failed
        before its stage move, or a PENDING put) stay only if that version is
        still PENDING.
        """
        staged = secret.staged()
        if staged is None:
            return secret
        version, patch = staged
        stages = secret.stages()
        if stages.get(Stage.CURRENT) == version:
            demoted = stages.get(Stage.PREVIOUS)
            base = secret.metadata_for(None)
            kept = {k: base.get(k) for k in patch if base.get(k) != patch[k]}
            if demoted and demoted != version and kept:
                # The version this put demoted keeps the settings it was written with (a PREVIOUS can
                # still be leased), before the plain tags change under it.
                self._set_tags(path, secret, {KEPT_KEY: {"version": demoted, "patch": kept}})
                secret = self._describe(path) or secret
            self._set_tags(path, secret, patch)
        elif secret.stages().get(Stage.PENDING) == version:
            return secret
        name = self._name(path)
        keys = [k for k in secret.tags if k in (TAG_META_JSON + STAGED_KEY, TAG_META + STAGED_KEY)
                or (k.startswith(TAG_META_MORE) and k.endswith(":" + STAGED_KEY))]
        self._call("UntagResource", f"updating metadata of {name}",
                   lambda c: c.untag_resource(SecretId=name, TagKeys=keys))
        return self._describe(path) or secret

    def _set_tags(self, path: SecretPath, secret: _Secret, patch: dict[str, Any]) -> None:
        """Write metadata ``patch`` as tags (``secret``: the tags before, to remove stale encodings)."""
        name = self._name(path)
        tag, before, after = _metadata_tags(path, patch)
        stale = [k for k in before if k in secret.tags]
        if stale:
            self._call("UntagResource", f"updating metadata of {name}",
                       lambda c: c.untag_resource(SecretId=name, TagKeys=stale))
        if tag:
            self._call("TagResource", f"updating metadata of {name}", lambda c: c.tag_resource(SecretId=name, Tags=tag))
        leftover = [k for k in after if k in secret.tags]  # continuations of a longer old value, now unread
        if leftover:
            self._call("UntagResource", f"updating metadata of {name}",
                       lambda c: c.untag_resource(SecretId=name, TagKeys=leftover))
        self._forget(path)

    def _actual(self, path: SecretPath, secret: _Secret) -> int:
        """The live CURRENT version (0: none, or soft-deleted; FOREIGN: a version runlease did not write).

        A foreign CURRENT does not block a plain put: writing a new version through
        runlease is how an operator gets back to a runlease-managed CURRENT.
        """
        if secret.deleted:
            return 0
        try:
            return secret.holder(path, Stage.CURRENT) or 0
        except InvalidValueError:
            return FOREIGN

    def _promote(self, path: SecretPath, secret: _Secret, version: int, cas: int | None) -> tuple[_Secret, int]:
        """Move AWSCURRENT to ``version`` from its holder in ``secret``; returns the state it moved from.

        With ``cas`` a moved holder is a ConflictError; without, the move is retried from the new holder.
        """
        from botocore.exceptions import ClientError

        for _ in range(MAX_ATTEMPTS):
            try:
                self._move_label(path, LABELS[Stage.CURRENT], version_id(version),
                                 secret.labels.get(LABELS[Stage.CURRENT]))
                return secret, self._actual(path, secret)
            except ClientError:
                fresh = self._describe(path)
                if fresh is None:
                    raise SecretNotFoundError(f"secret {path} not found") from None
                if cas is not None:
                    # The version keeps its writing label: every read refuses it as an unfinished write.
                    found = self._actual(path, fresh)
                    raise ConflictError(
                        f"check-and-set failed for {path}: expected CURRENT v{cas}, "
                        f"found {'a version runlease did not write' if found == FOREIGN else f'v{found}'}"
                    ) from None
                secret = fresh
        raise ConflictError(f"{path} kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} rounds")

    def move_stage(self, path: SecretPath, stage: Stage, version: int | None, *, expected: int | None = None) -> None:
        from botocore.exceptions import ClientError

        label = LABELS[stage]
        for _ in range(MAX_ATTEMPTS):
            secret = self._live(path, self._describe(path))
            if version is not None and (version < 1 or version not in self._numbers(path)):
                raise SecretNotFoundError(f"secret {path} has no version {version}")
            holder = secret.holder(path, stage)
            if expected is not None and holder != expected:
                raise ConflictError(f"stage {stage.value} of {path} moved: expected v{expected}, found {holder}")
            if holder == version:
                return
            from_vid = secret.labels.get(label)
            if version is not None:
                to_vid: str | None = version_id(version)
            else:  # AWSCURRENT can only move, so "no CURRENT" means "on the placeholder"
                to_vid = version_id(0) if stage is Stage.CURRENT else None
            try:
                self._move_label(path, label, to_vid, from_vid)
            except ClientError:
                continue  # the label moved under us: re-read and re-check ``expected``
            if stage is Stage.CURRENT:
                self._restore_previous(path, secret.labels.get(LABELS[Stage.PREVIOUS]), from_vid)
            self._forget(path)
            if stage is Stage.CURRENT and secret.staged() is not None:
                fresh = self._describe(path)
                if fresh is not None:
                    self._finish_staged(path, fresh)  # settings a PENDING put staged for the new CURRENT
            return
        raise ConflictError(f"{path} kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} rounds")

    def delete(self, path: SecretPath) -> None:
        """Soft delete: the stage labels go to the placeholder first (so a one-call stage read finds
        nothing at once), then the ``runlease:deleted-at`` tag marks the secret for ``info``/``ls``."""
        self._live(path, self._describe(path))
        name = self._name(path)
        self._forget(path)
        self._drop_labels_from_before_delete(path, "")
        self._call("TagResource", f"deleting {name}", lambda c: c.tag_resource(
            SecretId=name, Tags=[{"Key": TAG_DELETED, "Value": utcnow().isoformat()}]))

    def update_metadata(
        self, path: SecretPath, patch: dict[str, Any], *, expected: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if RESERVED_KEYS & set(patch):
            raise InvalidValueError(f"metadata keys {sorted(RESERVED_KEYS)} of {path} are reserved")
        secret = self._live(path, self._describe(path))
        if secret.staged() is not None:
            secret = self._finish_staged(path, secret)
        # Tags have no conditional write: ``expected`` is checked against the
        # description just read, so a concurrent tag write in between is not
        # detected (the same window as ``cas`` on a PENDING put; see the module docstring).
        stale = metadata_conflicts(secret.metadata(), expected)
        if stale:
            raise ConflictError(f"metadata of {path} changed: {', '.join(stale)} no longer as expected")
        before = secret.metadata_for(None)
        self._set_tags(path, secret, patch)
        if any(before.get(k) != v for k, v in patch.items() if k not in SECRET_ONLY_KEYS):
            self._mark_settings_changed(path, secret)
        meta = secret.metadata()
        meta.update(patch)
        return meta

    def _mark_settings_changed(self, path: SecretPath, secret: _Secret) -> None:
        """Label every version holding a stage ``runlease-settings-<N>``: its lease settings are now the tags.

        Runs after the tags are written: until the label is there a reader gets
        the settings sealed with the version (what it was written with), from
        then on the new ones. Labels of versions that hold no stage any more
        are dropped (AWS allows 20 labels per secret). Versions written later
        seal the changed settings themselves and need no label -- except one
        whose put read the tags before this change and wrote after it: it
        keeps the settings it read (tags have no conditional write; the same
        window as ``expected`` above).
        """
        held = set(secret.stages().values())
        for label, vid in list(secret.labels.items()):
            if label.startswith(SETTINGS_LABEL) and version_number(vid) not in held:
                self._move_label(path, label, None, vid)
        for n in sorted(held):
            if secret.labels.get(f"{SETTINGS_LABEL}{n}") != version_id(n):
                self._move_label(path, f"{SETTINGS_LABEL}{n}", version_id(n), None)
        self._forget(path)

    # -- SecretStore: reads ---------------------------------------------------------

    def resolve(self, path: SecretPath, stage: Stage = Stage.CURRENT) -> Resolved:
        secret = self._live(path, self._describe(path))
        version = secret.holder(path, stage)
        if version is None:
            raise SecretNotFoundError(f"secret {path} has no {stage.value} version")
        return Resolved(version=version, metadata=secret.metadata_for(version))

    def current_version(self, path: SecretPath, stage: Stage = Stage.CURRENT) -> int:
        """Which version ``stage`` is on: ``resolve(path, stage).version``, in the request Airflow's backend makes.

        For a lease cache's revalidation (runlease_airflow): one GetSecretValue
        of the stage, where ``resolve`` needs a DescribeSecret, a larger answer
        for the same fact. Only the VersionId and labels are looked at: the
        caller already holds that version's value, and an AWS version never
        changes. A soft delete (the labels moved to the placeholder) or an
        unfinished write is a SecretNotFoundError, as from :meth:`get`; any
        other answer -- an error, a VersionId runlease did not write -- is
        left to :meth:`get`, so it fails exactly as a read would.
        """
        from botocore.exceptions import ClientError

        name = self._name(path)
        try:
            resp = self._call("GetSecretValue", f"reading {name}",
                              lambda c: c.get_secret_value(SecretId=name, VersionStage=LABELS[stage]),
                              "ResourceNotFoundException", "InvalidRequestException")
        except ClientError:
            return self.get(path, stage=stage).version
        n = version_number(resp.get("VersionId") or "")
        if n is None or n == 0 or unfinished(resp.get("VersionStages") or ()):
            return self.get(path, stage=stage).version
        return n

    def get(self, path: SecretPath, *, version: int | None = None, stage: Stage | None = Stage.CURRENT) -> StoredSecret:
        """A version's value and the settings that apply to it.

        A stage read of a version written in the envelope layout is one
        GetSecretValue (``VersionStage`` explicit): the value, its VersionId,
        its labels and the settings sealed with it (:mod:`runlease.store.aws_envelope`)
        all come from that one immutable version, so value and settings are
        always the pair one put wrote. A soft delete moves the stage labels to
        the placeholder first, an unfinished put keeps its writing label:
        both are seen in that same response. Its ``metadata`` are the lease
        settings only; rotation policy and state are the secret's, read with
        ``resolve``/``info``.

        DescribeSecret is added for a version whose settings were changed
        after its write (``runlease-settings-N``, see ``update_metadata``:
        always, fresh), for an explicit ``version`` (to see a soft delete), and
        for versions written before the envelope: their settings are the tags,
        from this process's last description while it is younger than
        ``metadata_cache_seconds`` *and* showed the stage on the version AWS
        just returned (a put's settings reach a reader only with its version).
        """
        from botocore.exceptions import ClientError

        name = self._name(path)
        wanted = stage or Stage.CURRENT
        if version is None:
            kwargs: dict[str, Any] = {"SecretId": name, "VersionStage": LABELS[wanted]}
        else:
            if version < 1:
                raise SecretNotFoundError(f"secret {path} has no version {version}")
            kwargs = {"SecretId": name, "VersionId": version_id(version)}
        for _ in range(MAX_ATTEMPTS):
            try:
                resp = self._call("GetSecretValue", f"reading {name}", lambda c: c.get_secret_value(**kwargs),
                                  "ResourceNotFoundException", "InvalidRequestException")
            except ClientError as err:
                self._forget(path)
                if self._describe(path) is None:
                    raise SecretNotFoundError(f"secret {path} not found ({self._lookup_where(path)})") from None
                if error_code(err) == "InvalidRequestException" and "delet" not in str(err).lower():
                    raise StoreUnavailableError(f"{self.service.describe()} refused reading {name} "
                                                "(InvalidRequestException)") from None
                raise SecretNotFoundError(self._missing(path, version, wanted)) from None
            vid = resp.get("VersionId") or ""
            n = version_number(vid)
            if n is None:
                raise InvalidValueError(f"{self._where(path)} returned version {vid}, which runlease did not write")
            if n == 0:
                raise SecretNotFoundError(self._missing(path, version, wanted))
            labels = resp.get("VersionStages") or ()
            if unfinished(labels):
                raise SecretNotFoundError(f"{self._missing(path, version, wanted)}: version {n} is an unfinished "
                                          "write (its stage move never happened)")
            opened = open_secret_string(path, name, n, self._where(path), resp.get("SecretString"))
            retagged = f"{SETTINGS_LABEL}{n}" in labels
            if opened.settings is not None and version is None and not retagged:
                return StoredSecret(path=path, version=n, value=opened.value, metadata=opened.settings)
            if retagged or (opened.settings is not None and version is not None):
                secret = self._live(path, self._describe(path))
                self._remember(name, secret)
            else:
                secret = self._seen_secret(path, wanted if version is None else None, vid)
            if version is None and secret.labels.get(LABELS[wanted]) != vid:
                continue  # the stage moved between the two calls: read again
            meta = secret.metadata_for(n) if opened.settings is None or retagged else dict(opened.settings)
            return StoredSecret(path=path, version=n, value=opened.value, metadata=meta)
        raise ConflictError(f"{path} kept changing under concurrent writers; gave up after {MAX_ATTEMPTS} rounds")

    @staticmethod
    def _missing(path: SecretPath, version: int | None, stage: Stage) -> str:
        if version is None:
            return f"secret {path} has no {stage.value} version"
        return f"secret {path} has no version {version}"

    def _seen_secret(self, path: SecretPath, stage: Stage | None, vid: str) -> _Secret:
        """A live description of the secret, from this process's cache when it still fits ``stage -> vid``."""
        name = self._name(path)
        now = time.monotonic()
        with self._seen_lock:
            seen = self._seen.get(name)
        if (stage is not None and seen is not None and now - seen[0] < self.options.metadata_cache_seconds
                and seen[1].labels.get(LABELS[stage]) == vid):
            return seen[1]
        secret = self._live(path, self._describe(path))
        self._remember(name, secret)
        return secret

    def _remember(self, name: str, secret: _Secret) -> None:
        with self._seen_lock:
            self._seen.pop(name, None)  # re-inserted last: the oldest entries go first
            self._seen[name] = (time.monotonic(), secret)
            while len(self._seen) > SEEN_MAX:
                self._seen.pop(next(iter(self._seen)))

    def _forget(self, path: SecretPath) -> None:
        with self._seen_lock:
            self._seen.pop(self._name(path), None)

    def _lookup_where(self, path: SecretPath) -> str:
        """Where a missing secret was looked for: name, region and endpoint (a wrong region is a common cause)."""
        return f"looked for {self._name(path)} in {self.service.describe()}"

    def _info(self, path: SecretPath, secret: _Secret, versions: int) -> SecretInfo:
        now = utcnow()
        return SecretInfo(
            path=path, stages=secret.stages(), versions=versions,
            created_at=secret.created or now, updated_at=secret.changed or secret.created or now,
            deleted=secret.deleted, metadata=secret.metadata(),
        )

    def info(self, path: SecretPath) -> SecretInfo:
        secret = self._describe(path)
        if secret is None:
            raise SecretNotFoundError(f"secret {path} not found")
        return self._info(path, secret, max(self._numbers(path), default=0))

    def list(self, prefix: str = "", *, include_deleted: bool = False) -> list[SecretInfo]:
        wanted = self.prefix + prefix

        def fetch(client: Any) -> list[dict[str, Any]]:
            kwargs: dict[str, Any] = {"IncludePlannedDeletion": include_deleted}
            if wanted:
                kwargs["Filters"] = [{"Key": "name", "Values": [wanted]}]
            pages = client.get_paginator("list_secrets").paginate(**kwargs)
            return [s for page in pages for s in page.get("SecretList") or []]

        out = []
        for doc in self._call("ListSecrets", f"listing {wanted}*", fetch):
            name = str(doc.get("Name", ""))
            if not name.startswith(wanted):  # AWS's name filter ignores case
                continue
            try:
                path = SecretPath.parse(name[len(self.prefix):])
            except InvalidPathError:
                continue
            secret = _Secret.from_api(doc)
            if TAG_MANAGED not in secret.tags or (secret.deleted and not include_deleted):
                continue
            self._remember(name, secret)  # dates for version_created_at; labels as fresh as a describe
            # The newest labelled version stands in for the count: one ListSecretVersionIds per
            # secret would make `ls` and `rotation status` O(secrets) requests (info() is exact).
            newest = max((n for vid in secret.labels.values() if (n := version_number(vid))), default=0)
            out.append(self._info(path, secret, newest))
        return sorted(out, key=lambda i: str(i.path))

    def history(self, path: SecretPath) -> list[SecretVersion]:
        if self._describe(path) is None:
            raise SecretNotFoundError(f"secret {path} not found")
        out = []
        for entry in self._versions(path):
            n = version_number(entry["VersionId"])
            if not n or unfinished(entry.get("VersionStages")):
                continue
            stages = sorted(STAGES_BY_LABEL[s] for s in entry.get("VersionStages") or [] if s in STAGES_BY_LABEL)
            out.append(SecretVersion(path=path, version=n, created_at=entry.get("CreatedDate") or utcnow(), stages=stages))
        return sorted(out, key=lambda v: v.version)

    # -- operations ---------------------------------------------------------------

    def check(self) -> str:
        """One cheap authenticated call: proves region, endpoint and credentials before `init` writes."""
        self._call("ListSecrets", "checking access", lambda c: c.list_secrets(MaxResults=1))
        return self.location


__all__ = ["AwsOptions", "AwsSecretsStore", "error_code", "version_id", "version_number"]
