"""Secret stores: the protocol and its implementations (SDKs imported lazily)."""

from runlease.store.base import Resolved, SecretStore, StoredSecret

__all__ = ["Resolved", "SecretStore", "StoredSecret"]
