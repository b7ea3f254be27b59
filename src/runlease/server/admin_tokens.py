"""Admin tokens for operators and the CLI talking to ``runlease serve``: stored as MACs, never in clear.

A token is ``rladm_<id>_<secret>`` (256 random bits of secret). The home's
``server-tokens.json`` keeps, per token, its id, name, creation time, the id
of the KEK it is bound to and ``HMAC-SHA256(k, token)`` where ``k`` is
derived (HKDF) from that KEK. So:

* the file never holds a usable token (a stolen backup authenticates nobody);
* a line added to the file by someone without the KEK is not a valid token
  (they cannot compute the MAC), which is the home's rule: nothing a file
  says is acted on unless authenticated under a key derived from the KEK;
* a lookup is by id, then one constant-time comparison.

``runlease server token create --name NAME`` prints the token once;
``revoke`` deletes its entry. A KEK rotation keeps old tokens working as long
as their KEK stays loaded (it is named per entry).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runlease.keys.crypto import Keyring
from runlease.errors import ConfigError, MasterKeyError
from runlease.integrity.home_guard import replace_private_file
from runlease.models import utcnow

TOKENS_FILE_NAME = "server-tokens.json"
PREFIX = "rladm_"
_TOKEN_RE = re.compile(r"rladm_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


@dataclass(frozen=True)
class AdminTokenEntry:
    token_id: str
    name: str
    created_at: str
    kek_id: str
    mac: str


def _mac_key(keyring: Keyring, kek_id: str) -> bytes:
    # From the audit key (itself HKDF of the KEK) with its own label: never the same key twice.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"runlease/v1/admin-token").derive(
        keyring.audit_key(kek_id))


def _mac(keyring: Keyring, kek_id: str, token: str) -> str:
    return hmac.new(_mac_key(keyring, kek_id), token.encode(), "sha256").hexdigest()


class AdminTokens:
    """The token file of one home, and the check of a presented admin token."""

    def __init__(self, path: Path, keyring: Keyring) -> None:
        self.path = path
        self.keyring = keyring
        self._lock = threading.Lock()
        self._loaded_stat: tuple[int, int, int] | None = None
        self._entries: dict[str, AdminTokenEntry] = {}

    @classmethod
    def of_home(cls, home: Path, keyring: Keyring) -> "AdminTokens":
        return cls(home / TOKENS_FILE_NAME, keyring)

    def _load(self) -> dict[str, AdminTokenEntry]:
        """Entries by id; re-read when the file changed (tokens created or revoked by the CLI)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._entries, self._loaded_stat = {}, None
            return self._entries
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._loaded_stat:
            try:
                doc = json.loads(self.path.read_text())
                entries = {e["token_id"]: AdminTokenEntry(**e) for e in doc.get("tokens", [])}
            except (OSError, ValueError, TypeError, KeyError) as err:
                raise ConfigError(f"admin token file {self.path} is unreadable: {type(err).__name__}") from None
            self._entries, self._loaded_stat = entries, stamp
        return self._entries

    def entries(self) -> list[AdminTokenEntry]:
        with self._lock:
            return sorted(self._load().values(), key=lambda e: e.created_at)

    def _write(self, entries: list[AdminTokenEntry]) -> None:
        doc = json.dumps({"tokens": [asdict(e) for e in entries]}, indent=2) + "\n"
        replace_private_file(self.path, doc.encode(), durable=False)

    def create(self, name: str) -> tuple[AdminTokenEntry, str]:
        """A new token for ``name``; returns the entry and the token (shown once, never stored)."""
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"token name {name!r}: use 1-64 of A-Z a-z 0-9 _ . @ - (starting with a letter or digit)")
        token_id = secrets.token_hex(8)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        kek_id = self.keyring.active_id
        entry = AdminTokenEntry(token_id=token_id, name=name, created_at=utcnow().isoformat(timespec="seconds"),
                                kek_id=kek_id, mac=_mac(self.keyring, kek_id, token))
        with self._lock:
            self._write([*self._load().values(), entry])
            self._loaded_stat = None
        return entry, token

    def revoke(self, name_or_id: str) -> int:
        with self._lock:
            entries = list(self._load().values())
            keep = [e for e in entries if name_or_id not in (e.name, e.token_id)]
            if len(keep) != len(entries):
                self._write(keep)
                self._loaded_stat = None
            return len(entries) - len(keep)

    def check(self, token: str) -> AdminTokenEntry | None:
        """The entry a presented token belongs to, or None. Constant-time in the secret part."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None
        with self._lock:
            entry = self._load().get(match.group(1))
        if entry is None:
            return None
        try:
            expected = _mac(self.keyring, entry.kek_id, token)
        except MasterKeyError:
            return None
        return entry if hmac.compare_digest(expected, entry.mac) else None
