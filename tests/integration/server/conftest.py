"""Fixtures of a real ``runlease serve`` (tests/support/served_home.py), shared with the KFP tests."""

from support.served_home import ADMIN, POLICY, ServedHome, served, served_factory, stock_home  # noqa: F401
