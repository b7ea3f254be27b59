"""Turning ``RUNLEASE_STORE_OPTIONS`` validation failures into one clear ConfigError."""

from __future__ import annotations

from pydantic import ValidationError

from runlease.errors import ConfigError


def options_error(store: str, err: ValidationError) -> ConfigError:
    """Name each bad option and why, without echoing the input (it may hold a credential by mistake)."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}" for e in err.errors()]
    return ConfigError(f"RUNLEASE_STORE_OPTIONS for the {store} store: " + "; ".join(parts))
