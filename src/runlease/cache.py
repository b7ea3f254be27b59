"""A rotation-aware read-through cache of decrypted versions.

Versions are immutable, so plaintext is cached by ``(path, version)`` and a
cached entry can never be wrong. What moves is the stage label, so the
cache never caches the stage -> version step: every read asks the store's
authoritative ``resolve`` first. The moment rotation moves CURRENT, the next
read resolves the new version and misses. What this saves is the expensive
part: unwrapping the data key and decrypting (or, for remote stores, the
value fetch).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from runlease.models import SecretPath, SecretValue, Stage
from runlease.store.base import SecretStore, StoredSecret


class RotationAwareCache:
    def __init__(self, store: SecretStore, max_entries: int = 1024) -> None:
        self.store = store
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int], SecretValue] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: SecretPath, stage: Stage = Stage.CURRENT, version: int | None = None) -> StoredSecret:
        """The secret at ``version``, or at whatever version ``stage`` points to right now.

        Metadata always comes from the fresh ``resolve``; only the value is cached.
        A store whose stage read is one request anyway (``one_call_reads``: AWS,
        where GetSecretValue returns the version with the value) is read
        directly -- a resolve first would double the requests for nothing.
        """
        if version is None and getattr(self.store, "one_call_reads", False):
            secret = self.store.get(path, stage=stage)
            with self._lock:
                self.misses += 1
                self._entries[(str(path), secret.version)] = secret.value
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            return secret
        resolved = self.store.resolve(path, stage)
        if version is None:
            version = resolved.version
        key = (str(path), version)
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if value is None:
            value = self.store.get(path, version=version).value
            with self._lock:
                self.misses += 1
                self._entries[key] = value
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return StoredSecret(path=path, version=version, value=value, metadata=resolved.metadata)

    def forget(self, path: SecretPath) -> None:
        """Drop a path's entries (after a delete, so plaintext does not outlive it in memory)."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == str(path)]:
                del self._entries[key]
