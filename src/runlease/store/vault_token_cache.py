"""The Vault client token, kept across processes in the runlease home (like Vault Agent's persisted token).

Why: Airflow runs every task in a fresh process, and a fresh process used to
log in to Vault before its first lookup (an AppRole login is a third of that
lookup's time, and every login mints a token Vault must store and expire).
Vault Agent solves the same problem by persisting its auto-auth token; this
module does it for runlease: after a login the token is written to the home,
and the next process on the worker starts with it instead of logging in.

What the file holds and how it is protected:

* one file per store identity, ``vault-token-<hash>.cache`` in the home,
  written atomically (temp file + rename) with mode 0600, never through a
  symlink, checked like every other file of the home before it is read
  (:mod:`runlease.integrity.home_guard`);
* the token and its schedule (wall-clock expiry, when to renew, whether it is
  renewable, whether the next refresh must be a login) sealed with AES-256-GCM
  (``cryptography``) under a key derived (HKDF) from the home's active KEK --
  a reader without the KEK learns nothing and cannot forge or edit an entry;
* the associated data binds it to the *identity* it was issued for -- Vault
  address, namespace, auth method, auth mount, role (AppRole role id /
  Kubernetes or JWT role) -- and to a keyed fingerprint of the login
  credential (secret id, JWT) read for this process: a file copied from
  another home (other KEK), made for another server, namespace or role, or
  left over from a rotated secret id fails authentication and is ignored.

Every failure (missing, unsafe, swapped, edited, truncated, foreign, expired)
means "no cached token": the session logs in as before and overwrites the
file. Nothing here ever logs or raises the token or the credential.

Not cached: tokens with a ``num_uses`` limit (another process would spend
uses this one counts on), and tokens of the ``token`` auth method (they are
given, not minted; there is no login to save).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from runlease.errors import RunleaseError
from runlease.integrity.home_guard import check_file, open_nofollow, replace_private_file
from runlease.keys.crypto import NONCE_BYTES, Keyring

log = logging.getLogger(__name__)

FORMAT = "runlease-vault-token-cache/v1"
#: HKDF ``info`` of the key that seals cached tokens (never shared with another purpose).
TOKEN_CACHE_INFO = b"runlease/v1/vault-token-cache"
#: A cached token with less than this many seconds left is not used (a request would meet it expired).
MIN_REMAINING_S = 5.0


class _Unusable(Exception):
    """The cache file exists but must not be used (the reason says why, never what it holds)."""


@dataclass(frozen=True)
class CachedToken:
    """A token and its schedule in wall-clock seconds (``time.time()``), so another process can use it."""

    token: str
    #: When the token expires; None for a token without TTL.
    expires_at: float | None
    #: When to renew it (or log in, see ``relogin_next``); None: never.
    renew_at: float | None
    #: The TTL the token was issued with (how the session spots a renewal capped by the max TTL).
    issued_ttl: float | None
    renewable: bool
    #: Vault already capped a renewal at the max TTL: the next refresh is a login.
    relogin_next: bool

    def __repr__(self) -> str:  # never show the token
        return f"CachedToken(expires_at={self.expires_at!r}, renew_at={self.renew_at!r})"

    def usable_at(self, now: float) -> bool:
        """Worth using at ``now``: not near expiry, and not due for a refresh it cannot have.

        Past its renewal time a renewable token is still used (the session renews it
        first, as it would its own); one that is not renewable, or whose max TTL is
        near, would be replaced by a login at once -- so it is not loaded at all.
        """
        if self.expires_at is not None and self.expires_at - now < MIN_REMAINING_S:
            return False
        if self.renew_at is not None and now >= self.renew_at and (not self.renewable or self.relogin_next):
            return False
        return True


def identity_of(address: str, namespace: str | None, method: str, auth_mount: str, role: str | None) -> str:
    """The store identity a cached token is bound to (canonical JSON; no secret in it)."""
    return json.dumps({"address": address, "namespace": namespace or "", "method": method,
                       "auth_mount": auth_mount, "role": role or ""}, sort_keys=True, separators=(",", ":"))


class VaultTokenCache:
    """One identity's cached token in one home: ``load`` and ``save`` (and ``drop``), each failing safe."""

    def __init__(self, home: Path, keyring: Keyring, identity: str, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.home = Path(home)
        self.identity = identity
        self._keyring = keyring
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.path = self.home / f"vault-token-{digest}.cache"
        self._key = keyring.derived_key(keyring.active_id, TOKEN_CACHE_INFO)
        self._now = wall_clock
        #: What happened, for operators and tests: hits, misses, rejected files, saves.
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        self.saves = 0

    def __repr__(self) -> str:
        return f"VaultTokenCache({str(self.path)!r})"

    def _aad(self, credential: str | None) -> bytes:
        fingerprint = hmac.new(self._key, (credential or "").encode(), hashlib.sha256).hexdigest()
        return f"{FORMAT}|{self._keyring.active_id}|{self.identity}|{fingerprint}".encode()

    # -- reading ----------------------------------------------------------------

    def load(self, credential: str | None) -> CachedToken | None:
        """The cached token for this identity and login credential, or None (then log in)."""
        try:
            found = self._load(credential)
        except _Unusable as err:
            self.rejected += 1
            log.warning("not using the cached Vault token %s: %s; logging in instead", self.path, err)
            return None
        except (OSError, RunleaseError) as err:
            self.rejected += 1
            log.warning("not using the cached Vault token %s (%s); logging in instead", self.path,
                        err if isinstance(err, RunleaseError) else type(err).__name__)
            return None
        if found is None:
            self.misses += 1
            return None
        if not found.usable_at(self._now()):
            self.misses += 1
            log.debug("cached Vault token %s is near expiry or due for a login; logging in", self.path)
            return None
        self.hits += 1
        return found

    def _load(self, credential: str | None) -> CachedToken | None:
        # The home's own rules: a regular file of ours, 0600, not a symlink (checked, then opened without
        # following one, so a link swapped in between is refused too).
        if not check_file(self.path, "Vault token cache", secret=True):
            return None
        try:
            raw = open_nofollow(self.path, "Vault token cache", _Unusable)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise ValueError
            blob = base64.b64decode(doc["sealed"], validate=True)
        except (ValueError, KeyError, TypeError):
            raise _Unusable("the file is malformed (truncated or edited)") from None
        if len(blob) <= NONCE_BYTES:
            raise _Unusable("the file is malformed (truncated or edited)")
        try:
            plain = AESGCM(self._key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._aad(credential))
        except InvalidTag:
            raise _Unusable(
                "it failed authentication (edited, copied from another home, made for another Vault server, "
                "namespace or role, sealed under another KEK, or the login credential changed since)"
            ) from None
        try:
            fields = json.loads(plain)
            return CachedToken(
                token=str(fields["token"]),
                expires_at=None if fields["expires_at"] is None else float(fields["expires_at"]),
                renew_at=None if fields["renew_at"] is None else float(fields["renew_at"]),
                issued_ttl=None if fields["issued_ttl"] is None else float(fields["issued_ttl"]),
                renewable=bool(fields["renewable"]),
                relogin_next=bool(fields["relogin_next"]),
            )
        except (ValueError, KeyError, TypeError):
            raise _Unusable("its sealed content is malformed") from None

    # -- writing ----------------------------------------------------------------

    def save(self, entry: CachedToken, credential: str | None) -> None:
        """Replace the cached token (best effort: a failure is logged and the login's token still used).

        Atomic (temp file, then rename over the old one: a reader sees the old or
        the new file, never half of one), 0600, created with ``O_EXCL|O_NOFOLLOW``
        so nothing planted at the temp name is followed; the rename replaces a
        symlink at the final name instead of writing through it. No fsync: a torn
        file after a crash fails authentication and costs one login, nothing more.
        """
        plain = json.dumps(asdict(entry)).encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + AESGCM(self._key).encrypt(nonce, plain, self._aad(credential))
        doc = json.dumps({"format": FORMAT, "note": "Vault client token sealed under the home's KEK; safe to delete",
                          "sealed": base64.b64encode(sealed).decode()}).encode()
        try:
            replace_private_file(self.path, doc, durable=False)
            self.saves += 1
        except OSError as err:
            log.warning("could not write the Vault token cache %s (%s); the next process logs in again",
                        self.path, err.strerror or type(err).__name__)

    def drop(self) -> None:
        """Forget the cached token (Vault says it is dead: no other process should try it)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove the Vault token cache %s (%s)", self.path, err.strerror)
