"""Plumbing for external systems: SQLite, PostgreSQL and AWS clients (SDKs imported lazily)."""
