"""Ledgers: where leases and the audit chain live (local SQLite now; PostgreSQL later)."""

from runlease.ledger.base import AuditQuery, Ledger

__all__ = ["AuditQuery", "Ledger"]
